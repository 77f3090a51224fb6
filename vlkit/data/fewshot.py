"""Deterministic few-shot sampling, with validation from the data's val split or from the train pool."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlkit.data.dataset import ImageDataset
from vlkit.errors import DataError

log = logging.getLogger("vlkit.data")

VAL_MODES = ("auto", "split", "from-train")
# Validation images per class taken from a val split. 16 (the largest shot count of the
# few-shot tables) gives selection a resolution of 1/(16 C) instead of min(K, 4)'s
# 1/(4 C), where a grid of C values or epochs ties; encoding 16 images per class once is cheap.
DEFAULT_VAL_PER_CLASS = 16


@dataclass
class FewShotSplit:
    """``train`` has ``shots`` images per class; ``val`` is the validation sample (see ``validation``).

    ``validation`` records where ``val`` came from: ``source`` (``"val-split"``: the data's
    own val split, at most ``per_class`` per class; ``"from-train"``: ``per_class`` =
    min(shots, 4) per class from the train pool, disjoint from ``train``) and, when the
    data's val split was wanted but is missing, ``fallback`` saying so.
    """

    train: ImageDataset
    val: ImageDataset
    shots: int
    seed: int
    validation: dict[str, Any] = field(default_factory=dict)


def _by_class(dataset: ImageDataset) -> list[list[int]]:
    by_class: list[list[int]] = [[] for _ in dataset.classnames]
    for i, label in enumerate(dataset.labels):
        by_class[label].append(i)
    return by_class


def _from_val_split(val_pool: ImageDataset, classnames: list[str], per_class: int, seed: int) -> list[int]:
    """Up to ``per_class`` items of each class of ``val_pool``, a seeded draw (its own stream)."""
    if per_class < 1:
        raise DataError(f"validation images per class must be >= 1, got {per_class}")
    if val_pool.classnames != classnames:
        raise DataError(f"the val split of {val_pool.name} has other classes than the train pool "
                        f"({len(val_pool.classnames)} vs {len(classnames)}): they must share one label set")
    rng = np.random.default_rng([seed, 1])  # independent of the train draw: same train sample in every mode
    picked: list[int] = []
    empty = []
    for label, indices in enumerate(_by_class(val_pool)):
        if not indices:
            empty.append(classnames[label])
        picked.extend(indices[j] for j in rng.permutation(len(indices))[:per_class])
    if empty:
        log.warning("the val split of %s has no image of %d class(es), first: %s", val_pool.name, len(empty), empty[0])
    return picked


def few_shot(dataset: ImageDataset, shots: int, seed: int, val_shots: int | None = None,
             val_pool: ImageDataset | None = None, val_per_class: int = DEFAULT_VAL_PER_CLASS,
             fallback: str = "") -> FewShotSplit:
    """Sample ``shots`` training items per class and a validation sample.

    Without ``val_pool``, validation is ``val_shots`` (default ``min(shots, 4)``) more
    items per class of ``dataset``, disjoint from train (the few-shot papers' protocol);
    ``fallback`` records why, when a val split was wanted. With ``val_pool`` (the data's
    own val split), validation is up to ``val_per_class`` items per class of it. The
    training sample is the same in both cases. Same inputs give the same split on every
    machine (NumPy's PCG64 seeded with ``seed``). A class with too few items raises a
    DataError naming it.
    """
    if shots < 1:
        raise DataError(f"shots must be >= 1, got {shots}")
    from_train = val_pool is None
    val_shots = (min(shots, 4) if val_shots is None else val_shots) if from_train else 0
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label, indices in enumerate(_by_class(dataset)):
        need = shots + val_shots
        if len(indices) < need:
            what = f"{shots} shots + {val_shots} validation need {need}" if val_shots else f"{shots} shots need them"
            raise DataError(
                f"class {dataset.classnames[label]!r} of {dataset.name} has {len(indices)} images; "
                f"{what} (use fewer --shots)"
            )
        picked = rng.permutation(len(indices))[:need]
        train_idx.extend(indices[j] for j in picked[:shots])
        val_idx.extend(indices[j] for j in picked[shots:])
    train = dataset.subset(train_idx, f"train-{shots}shot-seed{seed}")
    if from_train:
        validation = {"source": "from-train", "per_class": val_shots, **({"fallback": fallback} if fallback else {})}
        val = dataset.subset(val_idx, f"val-{val_shots}shot-seed{seed}")
    else:
        validation = {"source": "val-split", "per_class": val_per_class}
        val = val_pool.subset(_from_val_split(val_pool, list(dataset.classnames), val_per_class, seed),
                              f"val-max{val_per_class}-seed{seed}")
    validation["size"] = len(val)
    return FewShotSplit(train=train, val=val, shots=shots, seed=seed, validation=validation)


def check_val_options(val: str, val_per_class: int) -> None:
    """A one-line DataError for an unknown ``--val`` mode or a ``--val-per-class`` below 1."""
    if val not in VAL_MODES:
        raise DataError(f"--val must be one of {', '.join(VAL_MODES)}, got {val!r}")
    if isinstance(val_per_class, bool) or not isinstance(val_per_class, int) or val_per_class < 1:
        raise DataError(f"--val-per-class must be an integer >= 1, got {val_per_class!r}")


def choose_validation(mode: str, val_pool: ImageDataset | None, name: str) -> tuple[ImageDataset | None, str]:
    """Which validation the few-shot sample takes: ``(val_pool or None, fallback note)``.

    ``auto`` (default): the data's val split when it has one, else min(K, 4) from the
    train pool with the fallback noted; ``split``: the val split, an error without one;
    ``from-train``: the papers' min(K, 4) from the train pool, even when a val split exists.
    """
    if mode not in VAL_MODES:
        raise DataError(f"--val must be one of {', '.join(VAL_MODES)}, got {mode!r}")
    if mode == "from-train":
        return None, ""
    if val_pool is not None and len(val_pool):
        return val_pool, ""
    if mode == "split":
        raise DataError(f"{name} has no val split: lay it out as train/, val/, test/ folders (or a split file "
                        "with a val list), or pass --val from-train")
    return None, f"{name} has no val split"


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
