"""From datasets to results: build a few-shot task, fit a method, score it with its cost."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from vlkit.backbones import Backbone
from vlkit.data import DEFAULT_VAL_PER_CLASS, ImageDataset, choose_validation, few_shot
from vlkit.errors import DataError
from vlkit.features.store import FeatureStore
from vlkit.features.text_weights import zero_shot_weights
from vlkit.methods import Method, create_method
from vlkit.methods.task import Task
from vlkit.protocols.scoring import measure, score
from vlkit.report.result import Result

__all__ = ["DEFAULT_TEMPLATES", "DEFAULT_VIEWS", "build_task", "run_fewshot", "templates_for", "validation_record"]

log = logging.getLogger("vlkit.protocols.fewshot")
DEFAULT_VIEWS = 10  # Tip-Adapter's 10 augmented passes over the cache
DEFAULT_TEMPLATES = ["a photo of a {}."]


def templates_for(dataset: ImageDataset, templates: list[str] | None = None) -> list[str]:
    """Explicit templates, else the dataset's own, else "a photo of a {}."."""
    return list(templates or dataset.templates or DEFAULT_TEMPLATES)


def build_task(backbone: Backbone, train_pool: ImageDataset, shots: int, seed: int,
               store: FeatureStore | None = None, views: int = DEFAULT_VIEWS,
               templates: list[str] | None = None, with_images: bool = False,
               val_set: ImageDataset | None = None, val: str = "auto",
               val_per_class: int = DEFAULT_VAL_PER_CLASS) -> Task:
    """Sample ``shots`` per class (+ validation) and read their features from the store.

    Validation comes from ``val_set`` (the data's val split, at most ``val_per_class``
    per class) unless ``val`` is ``"from-train"`` or there is none (then min(shots, 4) per
    class from ``train_pool``); see :func:`vlkit.data.choose_validation`. The choice is
    recorded in ``task.extras["validation"]``.
    """
    store = store or FeatureStore()
    val_pool, fallback = choose_validation(val, val_set, train_pool.name)
    split = few_shot(train_pool, shots, seed, val_pool=val_pool, val_per_class=val_per_class, fallback=fallback)
    templates = templates_for(train_pool, templates)
    train_feats, train_norms = store.views(backbone, split.train, views)  # (N, 1 + views, D), (N, 1 + views)
    val_feats = store.image_features(backbone, split.val)  # (M, D)
    weights = zero_shot_weights(backbone, train_pool.classnames, templates, store)
    return Task(
        classnames=list(train_pool.classnames), text_weights=weights,
        train_features=train_feats, train_norms=train_norms, train_labels=torch.tensor(split.train.labels),
        val_features=val_feats, val_labels=torch.tensor(split.val.labels),
        templates=templates, backbone=backbone, seed=seed, logit_scale=float(backbone.logit_scale),
        train_images=split.train if with_images else None, val_images=split.val if with_images else None,
        extras={"validation": dict(split.validation, val_mode=val)},
    )


def validation_record(task: Task) -> dict[str, Any]:
    """What a result records about a task's validation: ``{"validation": {...}}`` (empty if unknown)."""
    record = task.extras.get("validation")
    return {"validation": dict(record)} if record else {}


def with_method_images(task: Task, method: Method, backbone: Backbone, store: FeatureStore) -> Task:
    """``task`` plus the image sets ``method`` asks for (``images_to_encode``), encoded from ``store``.

    Each becomes ``task.extras[key] = (dataset, features (n, D))``. A method with
    ``needs_layer_features`` also gets ``task.extras["layer_features"] = {"train": (N, V, depth, 2, W),
    "val": (M, depth, 2, W)}``, every view of the task's images from the store. A task whose
    method asks for nothing is returned as it is, never copied.
    """
    wanted = method.images_to_encode()
    encoded = {key: (dataset, store.image_features(backbone, dataset)) for key, dataset in wanted.items()}
    if method.needs_layer_features and task.train_images is not None:
        views = task.train_features.shape[1]
        train = torch.stack([store.layer_features(backbone, task.train_images, v) for v in range(views)], dim=1)
        val = store.layer_features(backbone, task.val_images) if task.val_images is not None \
            and len(task.val_images) else None
        encoded["layer_features"] = {"train": train, "val": val}
    if not encoded:
        return task
    return dataclasses.replace(task, extras={**task.extras, **encoded})


def run_fewshot(backbone: Backbone, train_pool: ImageDataset, test_set: ImageDataset, method: str | Method,
                shots: int, seed: int, store: FeatureStore | None = None, views: int = DEFAULT_VIEWS,
                templates: list[str] | None = None, save_dir: Any = None, val_set: ImageDataset | None = None,
                val: str = "auto", val_per_class: int = DEFAULT_VAL_PER_CLASS, **config: Any) -> Result:
    """Fit one method on a few-shot sample of ``train_pool``; score it once on ``test_set``.

    ``config`` are method options (recorded as the result's ``settings``). ``val_set``,
    ``val`` and ``val_per_class`` choose the validation sample (:func:`build_task`); the
    choice is the result's ``validation`` extra. Selection (hyper-parameters, epochs)
    sees only the training and validation samples; ``test_set`` is encoded and its
    labels read after ``fit`` returns.
    """
    if test_set.classnames != train_pool.classnames:
        raise DataError(f"train and test class names differ ({len(train_pool.classnames)} vs "
                        f"{len(test_set.classnames)}): they must share one label set")
    store = store or FeatureStore()
    method = create_method(method, **config) if isinstance(method, str) else method
    task = build_task(backbone, train_pool, shots, seed, store, views, templates,
                      with_images=method.input_kind == "images" or method.uses_backbone,
                      val_set=val_set, val=val, val_per_class=val_per_class)
    task = with_method_images(task, method, backbone, store)
    torch.manual_seed(seed)
    with measure(backbone.device) as cost:
        method.fit(task)
    result = score(method, backbone, test_set, store, cost, shots=shots, seed=seed, dataset=train_pool.name,
                   settings=config, extras=validation_record(task))
    if save_dir is not None:
        method.save(save_dir, backbone_fingerprint=backbone.fingerprint)
    return result
