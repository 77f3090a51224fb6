"""Support sets for TIP-X beyond the few-shot cache: a folder of images, or name-only retrieval.

Name-only retrieval is the offline form of SuS-X's SuS-LC (Udandarao et al., ICCV
2023, Sec. 3.1): for each class, the ``per_class`` images of an unlabelled pool whose
features are nearest (inner product) to the class's text weight, found through a
:class:`vlkit.features.index.VectorIndex`, are labelled with that class. An image may serve
several classes, as in SuS-LC where each class runs its own search.

Image folders (a support folder, a pool folder) are encoded by the caller, never here:
:func:`support_images` names them, the protocol encodes them from its feature store
into ``task.extras``, and the functions below read those features.
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


SUPPORT_IMAGES = "support_images"  # task.extras key: (ImageDataset, (n, D) features) of a support folder
POOL_IMAGES = "support_pool_images"  # task.extras key: (ImageDataset, (U, D) features) of a pool folder


def support_images(source: str, pool: str | Path | None) -> dict[str, ImageDataset]:
    """The image folders a support source names, as datasets the caller encodes: ``{extras key: dataset}``.

    A method never opens a feature store: the protocol encodes each dataset with its own
    store and puts ``(dataset, features)`` in ``task.extras[key]`` before ``fit``.
    """
    out: dict[str, ImageDataset] = {}
    if source not in ("fewshot", "name-only") and Path(source).expanduser().is_dir():
        root = Path(source).expanduser()
        out[SUPPORT_IMAGES] = load_image_folder(root, name=f"support-{root.name}")
    if source == "name-only" and pool is not None and Path(pool).expanduser().is_dir():
        path = Path(pool).expanduser()
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"pool folder {path} has no images")
        out[POOL_IMAGES] = ImageDataset([(str(p), 0) for p in files], ["pool"], name=f"pool-{path.name}")
    return out


def _encoded(task: Task, key: str, folder: Path) -> tuple[ImageDataset, torch.Tensor]:
    """The (dataset, features) the caller put in ``task.extras[key]`` for ``folder``."""
    entry = task.extras.get(key)
    if entry is None:
        raise VlkitError(f"the images of {folder} must be encoded by the caller: fit through "
                         f"vlkit.protocols.fewshot.run_fewshot, or put (dataset, features) from "
                         f"vlkit.protocols.fewshot.with_method_images in task.extras[{key!r}]")
    dataset, feats = entry
    feats = torch.as_tensor(feats).float()
    if feats.ndim != 2 or len(feats) != len(dataset):
        raise ShapeError(f"task.extras[{key!r}] must hold {len(dataset)} feature rows (n, D) for {folder}, "
                         f"got {tuple(feats.shape)}")
    return dataset, feats  # (n, D)


def folder_support(task: Task, root: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (encoded by the caller) and task labels of ``root/<class>/<image>``; every folder
    must name a task class."""
    dataset, feats = _encoded(task, SUPPORT_IMAGES, Path(root))
    lookup = {name.lower(): i for i, name in enumerate(task.classnames)}
    unknown = [c for c in dataset.classnames if c.lower() not in lookup]
    if unknown:
        raise DataError(f"support folder {root} has class folder(s) {unknown[:5]} that are not task classes; "
                        f"rename them to one of: {', '.join(task.classnames[:10])}...")
    mapping = torch.tensor([lookup[c.lower()] for c in dataset.classnames])
    labels = mapping[torch.tensor(dataset.labels)]
    return feats, labels


def pool_features(task: Task, pool: str | Path | None) -> torch.Tensor:
    """(U, D) unlabelled pool: ``task.unlabeled_features``, a ``.npy`` file, or a folder of images
    (encoded by the caller)."""
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
            feats = _encoded(task, POOL_IMAGES, path)[1]
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
