"""The library functions behind each CLI command; each returns a JSON-ready dict."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from vlkit.backbones import Backbone, load_backbone
from vlkit.data import DEFAULT_VAL_PER_CLASS, ImageDataset, MissingSplitError, check_val_options
from vlkit.data.resolve import has_splits, load_data
from vlkit.errors import VlkitError
from vlkit.features.store import FeatureStore
from vlkit.io import atomic_dir, atomic_write_json, creation_folder, read_json, unwritable_reason
from vlkit.methods import Method, create_method, list_methods, method_class
from vlkit.protocols.fewshot import run_fewshot, templates_for
from vlkit.protocols.scoring import measure, score

RUN_FILE = "run.json"
REFIT = "re-create the run with `vlkit fit ... --run-dir DIR --force`"


def feature_store(engine: str = "local", ray_address: str | None = None, workers: int | None = None) -> FeatureStore:
    """The feature store that ``--engine``, ``--ray-address`` and ``--workers`` describe (checked before any work):
    ``local`` encodes in this process, ``ray`` on a Ray cluster (:mod:`vlkit.features.ray_engine`)."""
    from vlkit.features.ray_engine import feature_engine

    return FeatureStore(engine=feature_engine(engine, ray_address, workers))


def extract_features(model: str, pretrained: str | None, data: str, split: str, views: int = 0,
                     device: str | None = None, skip_corrupt: bool = False, engine: str = "local",
                     ray_address: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """Encode ``split`` of ``data`` (plus ``views`` augmented views) into the store, in this process or on Ray."""
    store = feature_store(engine, ray_address, workers)
    backbone = load_backbone(model, pretrained, device)
    dataset = load_data(data, split, skip_corrupt=skip_corrupt)
    start = time.perf_counter()
    try:
        feats = store.view_features(backbone, dataset, views) if views else store.image_features(backbone, dataset)
    finally:
        if store.engine is not None:
            store.engine.close()
    seconds = time.perf_counter() - start
    ray_stats = {"ray": store.engine.last_stats} if store.engine is not None else {}
    return {"model": model, "pretrained": pretrained, "data": data, "split": split, "images": len(dataset),
            "views": 1 + views, "shape": list(feats.shape), "seconds": seconds, "cache_hits": store.hits,
            "cache_misses": store.misses, "images_per_second": len(dataset) * (1 + views) / max(seconds, 1e-9),
            "store": str(store.root), "engine": engine, **ray_stats}


def zeroshot(model: str, pretrained: str | None, data: str, split: str | None = None,
             templates: list[str] | None = None, device: str | None = None,
             skip_corrupt: bool = False) -> dict[str, Any]:
    """Zero-shot accuracy and cost of ``model`` on ``data`` (whole folder if it has no splits)."""
    backbone = load_backbone(model, pretrained, device)
    split = split or ("test" if has_splits(data) else "all")
    dataset = load_data(data, split, skip_corrupt=skip_corrupt)  # the one resolver: a misread layout fails here
    store = FeatureStore()
    from vlkit.methods.task import Task
    from vlkit.features.text_weights import zero_shot_weights

    with measure(backbone.device) as cost:
        weights = zero_shot_weights(backbone, dataset.classnames, templates_for(dataset, templates), store)
        method = create_method("zero-shot", logit_scale=backbone.logit_scale)
        method.fit(Task(classnames=dataset.classnames, text_weights=weights,
                        train_features=torch.zeros(0, 1, backbone.embed_dim), train_labels=torch.zeros(0)))
    return score(method, backbone, dataset, store, cost, dataset=dataset.name,
                 extras={"data": data, "split": split, "templates": templates_for(dataset, templates)}).to_dict()


def check_run_dir(run_dir: Path, force: bool = False) -> None:
    """Refuse a ``--run-dir`` that cannot take a new run, before any work.

    It must be a new or empty folder, or (with ``force``) a run folder, which the new run
    then replaces whole. A file, or a folder holding anything but a run, is never replaced.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise VlkitError(f"--run-dir {run_dir} is a file, not a folder: name a new folder for the run")
    if not run_dir.is_dir():
        folder = creation_folder(run_dir)  # the run is built beside its folder: that place must be writable
        reason = unwritable_reason(folder)
        if reason is not None:
            raise VlkitError(f"--run-dir {run_dir}: cannot write in {folder} ({reason}); name a "
                             "folder in a writable place")
        return
    if not any(run_dir.iterdir()):
        return
    if not (run_dir / RUN_FILE).is_file():
        raise VlkitError(f"--run-dir {run_dir} is a folder that is not a run and is not empty: name a new folder "
                         "(a run folder is replaced whole)")
    if not force:
        raise VlkitError(f"--run-dir {run_dir} already holds a run: pick another folder, or pass --force to "
                         "replace it")


def load_val_split(data: str, val: str, skip_corrupt: bool = False) -> ImageDataset | None:
    """The val split of ``data`` for selection, or None (``val`` is from-train, or the data has none)."""
    if val == "from-train":
        return None
    try:
        return load_data(data, "val", skip_corrupt)
    except MissingSplitError:
        return None


def fit(method: str, model: str, pretrained: str | None, data: str, shots: int, seed: int,
        settings: dict[str, Any] | None = None, run_dir: Path | None = None, views: int = 10,
        device: str | None = None, skip_corrupt: bool = False, val: str = "auto",
        val_per_class: int = DEFAULT_VAL_PER_CLASS, force: bool = False,
        store: FeatureStore | None = None) -> dict[str, Any]:
    """Fit ``method`` on ``shots`` per class of the train split; score once on the test split.

    Selection uses the data's val split (at most ``val_per_class`` per class) unless
    ``val`` is ``from-train`` or the data has none (then min(shots, 4) per class from the
    train pool); the result's ``validation`` says which. With ``run_dir`` the run
    (``run.json`` + ``method/``) is built in a temp folder beside it and published in one
    rename once everything is written: a failed or interrupted fit leaves no run, and an
    old run (``force``) stays whole until the new one replaces it.
    """
    method_class(method)(**(settings or {}))  # unknown names and bad options fail before any loading
    check_val_options(val, val_per_class)
    if run_dir is not None:
        check_run_dir(run_dir, force)
    backbone = load_backbone(model, pretrained, device)
    pool, test = load_data(data, "train", skip_corrupt), load_data(data, "test", skip_corrupt)
    val_set = load_val_split(data, val, skip_corrupt)
    options = dict(views=views, val_set=val_set, val=val, val_per_class=val_per_class, store=store,
                   **(settings or {}))
    if run_dir is None:
        fitted = run_fewshot(backbone, pool, test, method, shots, seed, **options)
        fitted.extras["data"] = data
        return fitted.to_dict()
    with atomic_dir(run_dir) as tmp:
        fitted = run_fewshot(backbone, pool, test, method, shots, seed, save_dir=tmp / "method", **options)
        fitted.extras["data"] = data
        result = fitted.to_dict()
        atomic_write_json(tmp / RUN_FILE, {"model": model, "pretrained": pretrained, "data": data,
                                           "method": method, "shots": shots, "seed": seed,
                                           "settings": settings or {},
                                           "validation": result.get("validation", {}), "result": result})
    return result


def read_run(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a ``vlkit fit --run-dir`` folder; a missing or damaged one is a one-line error."""
    run_file = Path(run_dir) / RUN_FILE
    if not run_file.is_file():
        raise VlkitError(f"{run_dir} is not a run folder (no run.json): create one with `vlkit fit ... --run-dir`")
    run = read_json(run_file, "run record", REFIT)
    wrong = [] if isinstance(run, dict) else ["a JSON object"]
    wrong += [key for key, kind in (("model", str), ("data", str), ("method", str)) if isinstance(run, dict)
              and not isinstance(run.get(key), kind)]
    if wrong:
        raise VlkitError(f"run record {run_file} is damaged (missing or malformed: {', '.join(wrong)}): {REFIT}")
    return run


def load_run(run_dir: Path, device: str | None = None) -> tuple[dict[str, Any], Method, Backbone]:
    """A ``vlkit fit --run-dir`` run: its record, its fitted method and the backbone it was fitted with."""
    run = read_run(run_dir)
    method_dir, fix = Path(run_dir) / "method", f"the run's method is damaged; {REFIT}"
    if method_dir.resolve().parent != Path(run_dir).resolve():
        raise VlkitError(f"{method_dir} leads outside the run folder {run_dir} (a link?): a run reads only its "
                         f"own method; {REFIT}")
    if not method_class(run["method"]).uses_backbone:
        Method.load(method_dir, fix=fix)  # a damaged run fails before the model loads
    backbone = load_backbone(run["model"], run.get("pretrained"), device)
    return run, Method.load(method_dir, backbone, fix=fix), backbone


def evaluate_run(run_dir: Path, data: str | None = None, split: str = "test",
                 device: str | None = None) -> dict[str, Any]:
    """Load a saved run (``vlkit fit --run-dir``) and score it on ``split`` of its data."""
    run, method, backbone = load_run(run_dir, device)
    dataset = load_data(data or run["data"], split)
    if dataset.classnames != method.classnames_:
        raise VlkitError(f"{data} has other classes than the run was fitted on ({len(method.classnames_)} classes)")
    result = score(method, backbone, dataset, FeatureStore(), shots=run.get("shots"), seed=run.get("seed"),
                   dataset=dataset.name, settings=run.get("settings"),
                   extras={"run": str(run_dir), "data": data or run["data"], "split": split})
    return result.to_dict()


def backbone_summary(backbone: Backbone) -> dict[str, Any]:
    """What a result records about the encoder."""
    return {"model": backbone.name, "pretrained": backbone.pretrained, "fingerprint": backbone.fingerprint,
            "embed_dim": backbone.embed_dim, "device": backbone.device.type}


ADAPT_BASELINES = ["zero-shot", "coop", "tip-adapter"]


def adapt(methods: list[str], model: str, pretrained: str | None, source: str, target: str, seed: int = 1,
          settings: dict[str, Any] | None = None, views: int = 10, device: str | None = None) -> dict[str, Any]:
    """``vlkit adapt``: each method on labelled ``source`` + unlabelled ``target``; target accuracy."""
    from vlkit.protocols.adaptation import run_adapt

    if methods == ["all"]:
        methods = [m for m in ADAPT_BASELINES if m in list_methods()]
        methods += [m for m in list_methods() if method_class(m).task_kind == "adaptation"]
    for name in methods:
        method_class(name)(**(settings or {}))  # unknown names and bad options fail before any loading
    backbone = load_backbone(model, pretrained, device)
    src = (load_data(source, "train"), load_data(source, "val"))
    tgt = (load_data(target, "train"), load_data(target, "test"))
    store = FeatureStore()
    rows = [run_adapt(backbone, src, tgt, name, seed, store, views, **(settings or {})).to_dict() for name in methods]
    return {"source": source, "target": target, "model": model, "pretrained": pretrained, "seed": seed,
            "rows": rows}


def fit_base_to_novel(method: str, model: str, pretrained: str | None, data: str, shots: int, seed: int,
                      settings: dict[str, Any] | None = None, views: int = 10,
                      device: str | None = None, val: str = "auto",
                      val_per_class: int = DEFAULT_VAL_PER_CLASS, store: FeatureStore | None = None) -> dict[str, Any]:
    """``vlkit fit --base-to-novel``: train on the first half of the classes, score base and novel."""
    from vlkit.protocols.base_to_novel import base_to_novel

    method_class(method)(**(settings or {}))  # unknown names and bad options fail before any loading
    check_val_options(val, val_per_class)
    backbone = load_backbone(model, pretrained, device)
    pool, test, val_set = load_data(data, "train"), load_data(data, "test"), load_val_split(data, val)
    result = base_to_novel(backbone, pool, test, method, shots, seed, store, views=views, val_set=val_set, val=val,
                           val_per_class=val_per_class, **(settings or {}))
    result.extras["data"] = data
    return result.to_dict()


def rank(models: list[str], data: str, shots: int = 16, seed: int = 1, source: str | None = None,
         device: str | None = None) -> dict[str, Any]:
    """``vlkit rank``: every transferability metric for every model on one few-shot sample of ``data``."""
    from vlkit.protocols.ranking import rank_models

    return rank_models(models, data, shots, seed, source, device)


def rank_layers(model: str, data: str, shots: int = 16, seed: int = 1, device: str | None = None) -> dict[str, Any]:
    """``vlkit rank --layers``: the feature metrics for every image-tower block of one model."""
    from vlkit.protocols.ranking import rank_layers as rank_blocks

    return rank_blocks(model, data, shots, seed, device)
