"""The base-to-novel protocol (Zhou et al., CoCoOp, CVPR 2022, Sec. 4.1).

Classes are split in two halves: the first ``ceil(C / 2)`` are *base* classes, the
rest *novel*. A method is trained on a few-shot sample of the base classes only, then
scored on the base classes' test images and, with the learned prompts applied to the
novel class names, on the novel classes' test images (each half a separate C/2-way
problem). The summary is the harmonic mean ``H = 2 B N / (B + N)``. Zero-shot CLIP's
numbers on the same split come with the result as the reference.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

from vlkit.data import DEFAULT_VAL_PER_CLASS, ImageDataset
from vlkit.errors import DataError, VlkitError
from vlkit.features.store import FeatureStore
from vlkit.features.text_weights import zero_shot_weights
from vlkit.methods import Method, create_method
from vlkit.protocols.fewshot import DEFAULT_VIEWS, build_task, templates_for, validation_record
from vlkit.protocols.scoring import accuracy, measure, method_logits, score
from vlkit.report.result import Result


def split_classes(num_classes: int) -> tuple[list[int], list[int]]:
    """(base, novel) class indices: the first ceil(C/2) classes, then the rest."""
    if num_classes < 2:
        raise DataError(f"base-to-novel needs at least 2 classes, got {num_classes}")
    half = math.ceil(num_classes / 2)
    return list(range(half)), list(range(half, num_classes))


def class_subset(dataset: ImageDataset, classes: list[int], tag: str) -> ImageDataset:
    """The items of ``classes`` only, relabelled 0..len(classes)-1 in that order."""
    new_label = {c: i for i, c in enumerate(classes)}
    items = [(src, new_label[label]) for src, label in dataset.items if label in new_label]
    digest = hashlib.sha256(",".join(map(str, classes)).encode()).hexdigest()[:12]
    return ImageDataset(items=items, classnames=[dataset.classnames[c] for c in classes],
                        name=f"{dataset.name}/{tag}", identity=f"{dataset.identity}/classes-{tag}:{digest}",
                        domain=dataset.domain, templates=list(dataset.templates), meta=dict(dataset.meta))


def harmonic_mean(base: float, novel: float) -> float:
    """2 B N / (B + N); 0 when both are 0 (the one copy in vlkit: import it from here)."""
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0


def _zero_shot_top1(backbone, dataset: ImageDataset, templates: list[str], store: FeatureStore) -> float:
    weights = zero_shot_weights(backbone, dataset.classnames, templates, store)  # (C, D)
    feats = store.image_features(backbone, dataset)  # (N, D)
    return accuracy(feats @ weights.T, torch.tensor(dataset.labels))["top1"]


def base_to_novel(backbone, train_pool: ImageDataset, test_set: ImageDataset, method: str | Method,
                  shots: int, seed: int, store: FeatureStore | None = None, views: int = DEFAULT_VIEWS,
                  templates: list[str] | None = None, val_set: ImageDataset | None = None, val: str = "auto",
                  val_per_class: int = DEFAULT_VAL_PER_CLASS, **config: Any) -> Result:
    """Train ``method`` on the base half of the classes; score base, novel and their harmonic mean.

    Returns the :class:`Result` of the base half (its ``top1``, ``per_class``, ``test_size``
    and cost) with the extras ``base``, ``novel``, ``hm`` (top-1 accuracy in percent), the
    same for zero-shot CLIP under ``zero_shot``, the class split and ``novel_test_size``. The
    method must classify unseen class names (``retarget``): CoOp, CoCoOp, KgCoOp and
    MaPLe do; DeFo and class-specific CoOp do not (a VlkitError says so before training).
    """
    if test_set.classnames != train_pool.classnames:
        raise DataError("train and test class names differ: they must share one label set")
    store = store or FeatureStore()
    method = create_method(method, **config) if isinstance(method, str) else method
    if not hasattr(method, "retarget") or not getattr(method, "transfers_to_new_classes", False):
        raise VlkitError(f"{method.name} cannot classify classes it was not trained on: "
                         f"base-to-novel needs a method with shared prompts (coop, cocoop, kgcoop, maple)")
    base_ids, novel_ids = split_classes(len(train_pool.classnames))
    templates = templates_for(train_pool, templates)
    base_pool = class_subset(train_pool, base_ids, "base")
    base_test, novel_test = class_subset(test_set, base_ids, "base"), class_subset(test_set, novel_ids, "novel")
    base_val = class_subset(val_set, base_ids, "base") if val_set is not None else None
    task = build_task(backbone, base_pool, shots, seed, store, views, templates,
                      with_images=method.input_kind == "images" or method.uses_backbone,
                      val_set=base_val, val=val, val_per_class=val_per_class)
    torch.manual_seed(seed)
    with measure(backbone.device) as cost:
        method.fit(task)
    result = score(method, backbone, base_test, store, cost, shots=shots, seed=seed, dataset=train_pool.name,
                   settings=config, extras=validation_record(task))
    novel = method.retarget(novel_test.classnames)
    novel_acc = accuracy(method_logits(novel, backbone, novel_test, store), torch.tensor(novel_test.labels))["top1"]
    zs_base = _zero_shot_top1(backbone, base_test, templates, store)
    zs_novel = _zero_shot_top1(backbone, novel_test, templates, store)
    result.extras.update(
        base=result.top1, novel=novel_acc, hm=harmonic_mean(result.top1, novel_acc),
        zero_shot={"base": zs_base, "novel": zs_novel, "hm": harmonic_mean(zs_base, zs_novel)},
        base_classes=base_test.classnames, novel_classes=novel_test.classnames, novel_test_size=len(novel_test))
    return result
