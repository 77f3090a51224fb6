"""The zero-to-few-shot upgrade: a run folder holding a Tip-Adapter cache that grows.

A run starts zero-shot (an empty cache: the logits are CLIP's) and improves as
labelled examples arrive, with no refitting: ``add`` appends keys to the cache. Until
every class has ``retune_min`` examples (3), alpha/beta keep their initial values; from
then on (unless the run was created with ``retune=False``) each ``add`` re-chooses them
by leave-one-out on the cached examples (``TipAdapter.retune``): there is no validation
split to use.
Layout of ``RUN/``::

    run.json          model, pretrained tag, backbone fingerprint, classes, templates,
                      alpha/beta, example counts, history, and which state is current
    state-000007/     the current TipAdapter (config.json + state.safetensors)

Every change writes a new ``state-N`` folder (atomically), then swaps ``run.json``
(temp file + rename), then deletes the old folder, under a lock file: a crash at any
point leaves ``run.json`` naming a complete state. A bad request (unknown label,
unreadable image, features from another backbone) raises before anything is written.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from vlkit.caches.tip_adapter import TipAdapter
from vlkit.data import open_image
from vlkit.errors import BackboneMismatchError, DataError, VlkitError
from vlkit.io import FileLock, atomic_write_json, read_json
from vlkit.methods.base import Method
from vlkit.methods.task import Task
from vlkit.features.text_weights import zero_shot_weights

log = logging.getLogger("vlkit.upgrade")
RUN_FILE = "run.json"
RUN_FORMAT = 1
DEFAULT_ALPHA, DEFAULT_BETA = 1.0, 5.5
RETUNE_MIN = 3  # leave-one-out needs >= 2 same-class neighbours left per held-out example
DEFAULT_TEMPLATES = ["a photo of a {}."]


def read_classes(path: str | Path) -> list[str]:
    """Class names from a text file: one per line; blank lines and ``#`` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"classes file not found: {path} (write one class name per line)")
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    if len(names) < 2:
        raise DataError(f"{path} lists {len(names)} class(es); a classifier needs at least 2, one per line")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path} lists class(es) {dupes} more than once; keep each name once")
    return names


def _meta_path(run: Path) -> Path:
    return Path(run) / RUN_FILE


REINIT = "re-create the run with `vlkit upgrade init --force`"
META_TYPES = {"model": str, "fingerprint": str, "embed_dim": int, "classes": list, "templates": list,
              "examples": int, "per_class": dict, "history": list, "state": str}


def read_meta(run: str | Path) -> dict:
    """``run.json`` of a run folder (a clear error when the folder is not a run, or the file is damaged)."""
    path = _meta_path(Path(run))
    if not path.exists():
        raise VlkitError(f"{run} is not an upgrade run (no {RUN_FILE}): create it with `vlkit upgrade init`")
    meta = read_json(path, "run record", REINIT)
    if not isinstance(meta, dict):
        raise VlkitError(f"{path} is damaged (not a JSON object): {REINIT}")
    if meta.get("format") != RUN_FORMAT:
        raise VlkitError(f"{path} has format {meta.get('format')}, this vlkit reads {RUN_FORMAT}: re-create the run")
    wrong = [key for key, kind in META_TYPES.items() if not isinstance(meta.get(key), kind)]
    if wrong:
        raise VlkitError(f"{path} is damaged (missing or malformed: {', '.join(wrong)}): {REINIT}")
    return meta


def state_dir(run: str | Path, meta: dict) -> Path:
    """The folder ``run.json`` names as the current state; it must lie inside the run folder.

    A ``state`` that climbs out (``../other-run/state-1``), is absolute, or is a link to a
    folder elsewhere is refused: a run folder cannot name state outside itself.
    """
    run = Path(run)
    named = Path(meta["state"])
    folder = (run / named).resolve()
    if named.is_absolute() or len(named.parts) != 1 or folder.parent != run.resolve():
        raise VlkitError(f"{_meta_path(run)} names state {meta['state']!r}, outside the run folder {run}: "
                         f"a run reads only its own state-N folders; {REINIT}")
    return folder


def _locked(run: Path) -> FileLock:
    """The run's lock (``RUN/.lock``): one change at a time; a second writer waits for the first."""
    run.mkdir(parents=True, exist_ok=True)
    return FileLock(run / ".lock")


def _commit(run: Path, meta: dict, method: TipAdapter) -> None:
    """Write a new state folder, point run.json at it, delete the others."""
    number = 1 + max([int(p.name.split("-")[1]) for p in run.glob("state-[0-9]*")] or [0])
    name = f"state-{number:06d}"
    method.save(run / name, backbone_fingerprint=meta["fingerprint"])
    atomic_write_json(_meta_path(run), {**meta, "state": name})
    for old in run.glob("state-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    meta["state"] = name


def load_backbone_for(meta: dict, backbone: Any = None, device: str | None = None) -> Any:
    """The run's backbone (loaded by name unless given); its fingerprint must match the run's."""
    if backbone is None:
        from vlkit.backbones import load_backbone

        backbone = load_backbone(meta["model"], pretrained=meta.get("pretrained"), device=device)
    if backbone.fingerprint != meta["fingerprint"]:
        raise BackboneMismatchError(
            f"this run was built with backbone {meta['fingerprint']}, but the model now loaded is "
            f"{backbone.fingerprint}: its weights changed; start a new run with `vlkit upgrade init`")
    return backbone


def init_run(run: str | Path, model: str, classes: Sequence[str], pretrained: str | None = None,
             templates: Sequence[str] | None = None, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
             retune: bool = True, retune_min: int = RETUNE_MIN, backbone: Any = None, device: str | None = None,
             force: bool = False) -> dict:
    """Create a zero-shot run for ``classes`` with ``model``; returns a summary dict."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise VlkitError(f"{run} is a file, not a folder: name a new folder for the run")
    if _meta_path(run).exists() and not force:
        raise VlkitError(f"{run} already holds a run: pick another folder or pass --force to replace it")
    if retune_min < 2:
        raise VlkitError(f"retune_min must be >= 2 (leave-one-out needs a same-class example left), got {retune_min}")
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise DataError(f"need at least 2 distinct class names, got {list(classes)[:5]}")
    if backbone is None:
        from vlkit.backbones import load_backbone

        backbone = load_backbone(model, pretrained=pretrained, device=device)
    templates = list(templates or DEFAULT_TEMPLATES)
    weights = zero_shot_weights(backbone, list(classes), templates).cpu()  # (C, D)
    d = weights.shape[1]
    task = Task(classnames=list(classes), text_weights=weights, train_features=torch.zeros(0, 1, d),
                train_labels=torch.zeros(0, dtype=torch.long), logit_scale=float(backbone.logit_scale))
    method = TipAdapter(alpha=alpha, beta=beta).fit(task)
    meta = {"format": RUN_FORMAT, "model": model, "pretrained": pretrained, "fingerprint": backbone.fingerprint,
            "embed_dim": d, "classes": list(classes), "templates": templates, "alpha": alpha, "beta": beta,
            "retune": retune, "retune_min": retune_min, "examples": 0, "per_class": {c: 0 for c in classes},
            "history": [], "created": time.time()}
    with _locked(run):
        _commit(run, meta, method)
    return {"run": str(run), "model": model, "classes": len(classes), "embed_dim": d, "examples": 0,
            "alpha": alpha, "beta": beta, "retune": retune, "fingerprint": backbone.fingerprint}


def load_method(run: str | Path, meta: dict | None = None) -> TipAdapter:
    """The run's current cache model."""
    meta = meta or read_meta(run)
    method = Method.load(state_dir(run, meta), fix=f"the run's state is damaged; {REINIT}")
    if not isinstance(method, TipAdapter):
        raise VlkitError(f"{run} holds a {method.name} state, not an upgradeable cache")
    return method


def encode_images(backbone: Any, images: Sequence[str | Path]) -> torch.Tensor:
    """Decode every image first (a corrupt one raises a DataError naming it), then encode: (n, D)."""
    if not images:
        raise DataError("no images given: pass one or more image files")
    decoded = [open_image(Path(p)) for p in images]
    with torch.no_grad():
        return backbone.encode_pil(decoded).cpu()


def add_features(run: str | Path, features: Any, label: str, fingerprint: str | None = None) -> dict:
    """Append (n, D) features of class ``label`` to the run's cache.

    ``fingerprint`` names the backbone that produced the features; a different one
    (or a different width) is a BackboneMismatchError. Nothing changes on error.
    """
    return {"run": str(run), **add_feature_groups(run, [(features, label)], fingerprint)[0]}


def add_feature_groups(run: str | Path, groups: Sequence[tuple[Any, str]], fingerprint: str | None = None) -> list[dict]:
    """Append several adds, each (n_i, D) features of one label, in one commit (a group commit).

    The adds are applied in order, alpha/beta are re-chosen once on the grown cache (the same
    values as after the last of separate adds: leave-one-out depends on the cache only), and one
    new state is written. Every add is checked before anything changes: one bad add fails them
    all and nothing is written. Returns one summary per add (counts after the whole group).
    """
    run = Path(run)
    read_meta(run)  # a clear error before the lock file is created
    with _locked(run):
        meta = read_meta(run)
        batches = []
        for features, label in groups:
            if label not in meta["classes"]:
                raise VlkitError(f"unknown label {label!r}; this run's classes are: {', '.join(meta['classes'])}")
            if fingerprint is not None and fingerprint != meta["fingerprint"]:
                raise BackboneMismatchError(f"these features come from backbone {fingerprint}, but the run uses "
                                            f"{meta['fingerprint']}: encode the images with the run's model")
            feats = torch.as_tensor(features).float()
            if feats.ndim != 2 or feats.shape[1] != meta["embed_dim"]:
                raise BackboneMismatchError(f"features must be (n, {meta['embed_dim']}) for this run's model, got "
                                            f"{tuple(feats.shape)}: they come from another backbone")
            batches.append((feats, label))
        method = load_method(run, meta)
        for feats, label in batches:
            method.add(feats, torch.full((len(feats),), meta["classes"].index(label)))
            meta["examples"] += len(feats)
            meta["per_class"][label] += len(feats)
        enough = min(meta["per_class"].values()) >= meta.get("retune_min", RETUNE_MIN)
        retuned = bool(meta.get("retune", True) and enough and method.retune())
        meta["alpha"], meta["beta"] = method.alpha_, method.beta_
        now = time.time()
        meta["history"].extend({"label": label, "added": len(feats), "time": now, "retuned": retuned,
                                **({"group": len(batches)} if len(batches) > 1 else {})} for feats, label in batches)
        _commit(run, meta, method)
    return [{"label": label, "added": len(feats), "examples": meta["examples"], "per_class": dict(meta["per_class"]),
             "alpha": meta["alpha"], "beta": meta["beta"], "retuned": retuned} for feats, label in batches]


def add_images(run: str | Path, images: Sequence[str | Path], label: str, backbone: Any = None,
               device: str | None = None) -> dict:
    """Encode ``images`` with the run's backbone and add them under ``label``."""
    meta = read_meta(run)
    if label not in meta["classes"]:  # fail before loading a model
        raise VlkitError(f"unknown label {label!r}; this run's classes are: {', '.join(meta['classes'])}")
    load_method(run, meta)  # a damaged state fails before the model loads
    backbone = load_backbone_for(meta, backbone, device)
    feats = encode_images(backbone, images)
    result = add_features(run, feats, label, fingerprint=backbone.fingerprint)
    return {**result, "images": [str(p) for p in images]}


def predict_images(run: str | Path, images: Sequence[str | Path], top_k: int = 5, backbone: Any = None,
                   device: str | None = None, method: TipAdapter | None = None) -> dict:
    """Top-``k`` classes with probabilities for each image, and the time per image."""
    if top_k < 1:
        raise VlkitError(f"top_k must be >= 1, got {top_k}")
    meta = read_meta(run)
    method = method or load_method(run, meta)  # a damaged state fails before the model loads
    backbone = load_backbone_for(meta, backbone, device)
    start = time.perf_counter()
    feats = encode_images(backbone, images)
    probs = method.predict_proba(feats)  # (n, C)
    seconds = time.perf_counter() - start
    k = min(top_k, probs.shape[1])
    top = probs.topk(k, dim=-1)
    rows = [{"image": str(path), "top": [{"class": meta["classes"][int(i)], "probability": float(p)}
                                         for p, i in zip(values, ids)]}
            for path, values, ids in zip(images, top.values, top.indices)]
    return {"run": str(run), "examples": meta["examples"], "alpha": method.alpha_, "beta": method.beta_,
            "predictions": rows,
            "seconds_per_image": seconds / max(len(images), 1)}
