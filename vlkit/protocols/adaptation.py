"""Domain adaptation runs: labelled source, unlabelled target, one final score.

Every method fits on the source's labelled training split (validation: the source's
val split) and sees the target only as unlabelled images (``task.unlabeled_features``
and ``task.extras["target_views"]``). Few-shot methods ignore the target: they are
the source-only baselines. Adaptation methods (``task_kind == "adaptation"``) use it.
The target's labels sit behind :class:`~vlkit.data.guard.HiddenLabelDataset` and
are revealed once, after ``fit``, to score accuracy and pseudo-label precision.
"""
from __future__ import annotations

from typing import Any

import torch

from vlkit.backbones import Backbone
from vlkit.data import ImageDataset
from vlkit.data.guard import HiddenLabelDataset
from vlkit.errors import DataError
from vlkit.features.store import FeatureStore
from vlkit.features.text_weights import zero_shot_weights
from vlkit.methods import create_method
from vlkit.methods.task import Task
from vlkit.protocols.fewshot import DEFAULT_VIEWS, templates_for, with_method_images
from vlkit.protocols.scoring import measure, score
from vlkit.report.result import Result


def build_adaptation_task(backbone: Backbone, source_train: ImageDataset, source_val: ImageDataset,
                          target_train: HiddenLabelDataset, store: FeatureStore, views: int, seed: int,
                          templates: list[str] | None = None) -> Task:
    """Source features + labels, source validation, and unlabelled target features (with views)."""
    if source_train.classnames != target_train.classnames:
        raise DataError(f"source and target classes differ ({len(source_train.classnames)} vs "
                        f"{len(target_train.classnames)}): adaptation needs one shared label set")
    target_views = store.view_features(backbone, target_train, views)  # (Nt, 1 + V, D)
    weights = zero_shot_weights(backbone, source_train.classnames, templates_for(target_train, templates), store)
    source_views, source_norms = store.views(backbone, source_train, views)  # (N, 1 + V, D), (N, 1 + V)
    return Task(
        classnames=list(source_train.classnames), text_weights=weights,
        train_features=source_views, train_norms=source_norms,
        train_labels=torch.tensor(source_train.labels),
        val_features=store.image_features(backbone, source_val), val_labels=torch.tensor(source_val.labels),
        templates=templates_for(target_train, templates), backbone=backbone, seed=seed,
        logit_scale=float(backbone.logit_scale), unlabeled_features=target_views[:, 0],
        extras={"target_views": target_views, "source_domain": source_train.domain,
                "target_domain": target_train.domain},
    )


def run_adapt(backbone: Backbone, source: tuple[ImageDataset, ImageDataset],
              target: tuple[ImageDataset, ImageDataset], method: str, seed: int = 1,
              store: FeatureStore | None = None, views: int = DEFAULT_VIEWS, **config: Any) -> Result:
    """Fit ``method`` on (source train, source val) + unlabelled target train; score on target test."""
    store = store or FeatureStore()
    source_train, source_val = source
    target_train, target_test = (t if isinstance(t, HiddenLabelDataset) else HiddenLabelDataset(t) for t in target)
    model = create_method(method, **config)
    task = with_method_images(build_adaptation_task(backbone, source_train, source_val, target_train, store, views,
                                                    seed), model, backbone, store)
    torch.manual_seed(seed)
    with measure(backbone.device) as cost:
        model.fit(task)
    extras: dict[str, Any] = {"task_kind": model.task_kind, "source": source_train.name, "target": target_test.name}
    pseudo = getattr(model, "pseudo_labels_", None)  # (indices (P,), labels (P,)) into target train
    result = score(model, backbone, target_test, store, cost, seed=seed, dataset=target_test.name, settings=config,
                   extras=extras)  # predictions fixed before the target labels are revealed
    if pseudo is not None:
        truth = torch.tensor(target_train.reveal())
        index, labels = pseudo
        result.extras["pseudo_labels"] = int(len(index))
        result.extras["pseudo_label_coverage"] = 100.0 * len(index) / max(len(target_train), 1)
        result.extras["pseudo_label_precision"] = (100.0 * float((truth[index] == labels).float().mean())
                                                   if len(index) else None)
    return result
