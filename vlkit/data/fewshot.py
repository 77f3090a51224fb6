"""Deterministic few-shot sampling with a disjoint validation split."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlkit.data.dataset import ImageDataset
from vlkit.errors import DataError


@dataclass
class FewShotSplit:
    """``train`` has ``shots`` images per class; ``val`` has ``min(shots, 4)``, disjoint from it."""

    train: ImageDataset
    val: ImageDataset
    shots: int
    seed: int


def few_shot(dataset: ImageDataset, shots: int, seed: int, val_shots: int | None = None) -> FewShotSplit:
    """Sample ``shots`` training and ``min(shots, 4)`` validation items per class.

    Same dataset, shots and seed give the same split on every machine (NumPy's
    PCG64 generator seeded with ``seed``). A class with fewer than
    ``shots + val_shots`` items raises a DataError naming it.
    """
    if shots < 1:
        raise DataError(f"shots must be >= 1, got {shots}")
    val_shots = min(shots, 4) if val_shots is None else val_shots
    rng = np.random.default_rng(seed)
    by_class: list[list[int]] = [[] for _ in dataset.classnames]
    for i, label in enumerate(dataset.labels):
        by_class[label].append(i)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label, indices in enumerate(by_class):
        need = shots + val_shots
        if len(indices) < need:
            raise DataError(
                f"class {dataset.classnames[label]!r} of {dataset.name} has {len(indices)} images; "
                f"{shots} shots + {val_shots} validation need {need} (use fewer --shots)"
            )
        picked = rng.permutation(len(indices))[:need]
        train_idx.extend(indices[j] for j in picked[:shots])
        val_idx.extend(indices[j] for j in picked[shots:])
    return FewShotSplit(
        train=dataset.subset(train_idx, f"train-{shots}shot-seed{seed}"),
        val=dataset.subset(val_idx, f"val-{val_shots}shot-seed{seed}"),
        shots=shots,
        seed=seed,
    )


def first_per_class(dataset: ImageDataset, n: int) -> ImageDataset:
    """The first ``n`` items of each class, in dataset order: a fixed, class-balanced subset
    (a smaller test set for a budget run). Its identity records the selection."""
    if n < 1:
        raise DataError(f"items per class must be >= 1, got {n}")
    seen: dict[int, int] = {}
    keep = []
    for i, label in enumerate(dataset.labels):
        if seen.get(label, 0) < n:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    return dataset.subset(keep, f"first{n}")
