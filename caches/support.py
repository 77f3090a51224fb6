"""Support sets for TIP-X beyond the few-shot cache: a folder of images, or name-only retrieval.

Name-only retrieval is the offline form of SuS-X's SuS-LC (Udandarao et al., ICCV
2023, Sec. 3.1): for each class, the ``per_class`` images of an unlabelled pool whose
features are nearest (inner product) to the class's text weight, found through a
:class:`vlkit.features.index.VectorIndex`, are labelled with that class. An image may serve
several classes, as in SuS-LC where each class runs its own search.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlkit.data import ImageDataset, load_image_folder
from vlkit.data.loaders import IMAGE_SUFFIXES
from vlkit.errors import DataError, ShapeError, VlkitError
from vlkit.features.index import VectorIndex
from vlkit.methods.task import Task

log = logging.getLogger("vlkit.caches")


def _backbone(task: Task, what: str):
    if task.backbone is None:
        raise VlkitError(f"{what} must be encoded: build the task with a backbone (vlkit.protocols.fewshot.build_task)")
    return task.backbone


def _encode(task: Task, dataset: ImageDataset) -> torch.Tensor:
    from vlkit.features.store import FeatureStore

    return FeatureStore().image_features(_backbone(task, f"images of {dataset.name}"), dataset)  # (n, D)


def folder_support(task: Task, root: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and task labels of ``root/<class>/<image>``; every folder must name a task class."""
    dataset = load_image_folder(root, name=f"support-{Path(root).name}")
    lookup = {name.lower(): i for i, name in enumerate(task.classnames)}
    unknown = [c for c in dataset.classnames if c.lower() not in lookup]
    if unknown:
        raise DataError(f"support folder {root} has class folder(s) {unknown[:5]} that are not task classes; "
                        f"rename them to one of: {', '.join(task.classnames[:10])}...")
    mapping = torch.tensor([lookup[c.lower()] for c in dataset.classnames])
    labels = mapping[torch.tensor(dataset.labels)]
    return _encode(task, dataset), labels


def pool_features(task: Task, pool: str | Path | None) -> torch.Tensor:
    """(U, D) unlabelled pool: ``task.unlabeled_features``, a ``.npy`` file, or a folder of images."""
    if pool is None:
        if task.unlabeled_features is None or len(task.unlabeled_features) == 0:
            raise VlkitError("name-only support needs an unlabelled pool: set task.unlabeled_features or "
                             "pool='<folder of images or .npy features>'")
        feats = torch.as_tensor(task.unlabeled_features).float()
    else:
        path = Path(pool).expanduser()
        if path.suffix == ".npy" and path.is_file():
            feats = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise DataError(f"pool folder {path} has no images")
            dataset = ImageDataset([(str(p), 0) for p in files], ["pool"], name=f"pool-{path.name}")
            feats = _encode(task, dataset)
        else:
            raise DataError(f"pool {path} is neither a folder of images nor a .npy feature file")
    if feats.ndim != 2 or feats.shape[1] != task.dim:
        raise ShapeError(f"pool features must be (U, {task.dim}), got {tuple(feats.shape)}: "
                         "features from another backbone? re-extract them with the task's model")
    return F.normalize(feats, dim=-1)


def name_only_support(pool: torch.Tensor, text_weights: torch.Tensor,
                      per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each class, the ``per_class`` pool features nearest its text weight: keys (C * k, D), labels."""
    index = VectorIndex.build(pool.contiguous(), kind="auto")
    _, ids = index.search(text_weights.float().contiguous(), per_class)  # (C, k)
    labels = torch.arange(len(text_weights)).repeat_interleave(ids.shape[1])
    log.debug("name-only support: %d pool images per class from a pool of %d", ids.shape[1], len(pool))
    return pool[ids.reshape(-1)], labels


def support_set(task: Task, text_weights: torch.Tensor, source: str, pool: str | None,
                per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (N, D) and labels (N,) of the support set named by ``source``."""
    if source == "name-only":
        return name_only_support(pool_features(task, pool), text_weights, per_class)
    if Path(source).expanduser().is_dir():
        return folder_support(task, Path(source).expanduser())
    raise VlkitError(f"support must be 'fewshot', 'name-only' or an existing folder of support images, got {source!r}")
