"""Model ranking: every transferability metric for every candidate model on one few-shot sample.

The sample is ``few_shot(train split, shots, seed)`` (the same draw ``vlkit fit`` trains on);
each model's features come from the feature store (the cache every command shares), so a
second ranking of the same models and data encodes nothing. A model that cannot be loaded
or scored is reported in one line and the others are still ranked.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vlkit.backbones import Backbone, load_backbone
from vlkit.backbones.registry import offline_models
from vlkit.data import MissingSplitError, few_shot
from vlkit.data.resolve import load_data
from vlkit.errors import ShapeError, VlkitError
from vlkit.features.store import FeatureStore
from vlkit.features.text_weights import zero_shot_weights
from vlkit.protocols.fewshot import templates_for
from vlkit.ranking import METRICS, compute_metrics

__all__ = ["load_ranked_model", "rank_layers", "rank_models", "rankings"]

log = logging.getLogger("vlkit.protocols.ranking")
RUN_RECORD = "vlkit_mini.json"  # what scripts/train_vlkit_mini.py writes beside its weights
RUN_MODEL = "vlkit-mini-run"  # the backbone name of a training run's weights


def load_ranked_model(spec: str, device: str | None = None) -> Backbone:
    """One ``--models`` entry as a frozen backbone.

    ``vlkit-mini`` / ``test-tiny`` (offline models); ``NAME:TAG`` (an open_clip model and its
    pretrained tag or a local checkpoint file: ``ViT-B-32:openai``, ``ViT-B-32:/ckpt.pt``); a
    folder written by ``scripts/train_vlkit_mini.py --out`` (or its weights file), which
    carries its own architecture record; or a bare open_clip name (random weights).
    """
    path = Path(spec).expanduser()
    if path.exists() and spec not in offline_models():
        run = path if path.is_dir() else path.parent
        if not (run / RUN_RECORD).is_file():
            raise VlkitError(f"a path names a vlkit-mini training run (a folder with {RUN_RECORD}); "
                             "for another checkpoint write MODEL:/path/to/checkpoint")
        import torch

        from vlkit.backbones import mini

        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model = mini.load_run(path)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise VlkitError(f"cannot load the training run ({exc.__class__.__name__}: {exc})") from None
        weights = path if path.is_file() else path / mini.IMAGE_WEIGHTS.name
        # its own name: "vlkit-mini" would stand for the shipped weights in the runner's cell keys
        return Backbone(model, RUN_MODEL, str(weights), mini.mini_tokenizer(), dev, None)
    name, _, tag = spec.partition(":")
    return load_backbone(name, tag or None, device)


def _train_sample(data: str, pool: Any, shots: int, seed: int) -> Any:
    """The training draw ``vlkit fit`` makes: validation from the val split when the data has one.

    The draw is the same in every validation mode; taking validation from the val split only
    spares the train pool the min(shots, 4) extra images per class a from-train draw needs.
    """
    try:
        val_pool = load_data(data, "val")
    except MissingSplitError:
        val_pool = None
    return few_shot(pool, shots, seed, val_pool=val_pool).train


def rankings(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per metric, the models from best to worst (only models that have the metric)."""
    order: dict[str, list[str]] = {}
    for metric in METRICS:
        scored = [r for r in rows if np.isfinite(r["scores"].get(metric, np.nan))]
        order[metric] = [r["model"] for r in sorted(scored, key=lambda r: -r["scores"][metric])]
    return {m: names for m, names in order.items() if names}


TIE = 1e-9  # scores this close (relative) tie: H-score is C - 1 for every model when N < D


def _mean_ranks(rows: list[dict[str, Any]], order: dict[str, list[str]]) -> None:
    """Each row's rank under each metric (1 = best; tied scores share the better rank) and its mean rank."""
    for row in rows:
        row["ranks"] = {}
        for metric, names in order.items():
            if row["model"] not in names:
                continue
            mine = row["scores"][metric]
            better = [r for r in rows if r["model"] in names
                      and r["scores"][metric] - mine > TIE * max(abs(mine), abs(r["scores"][metric]), 1e-12)]
            row["ranks"][metric] = len(better) + 1
        row["mean_rank"] = float(np.mean(list(row["ranks"].values()))) if row["ranks"] else float("nan")


def _recommend(rows: list[dict[str, Any]]) -> str | None:
    """The row with the best mean rank (ties: higher LogME), or None without rows."""
    return min(rows, key=lambda r: (r["mean_rank"], -r["scores"].get("logme", -np.inf)))["model"] if rows else None


def _score_model(spec: str, sample: Any, source: Any, templates: list[str], store: FeatureStore,
                 load: Callable[[str], Backbone], seed: int) -> dict[str, Any]:
    """Load one model, read its features (timed, hit or miss), compute every metric (timed)."""
    start = time.perf_counter()
    backbone = load(spec)
    loaded = time.perf_counter()
    misses = store.misses
    feats = store.image_features(backbone, sample)  # (N, D)
    weights = zero_shot_weights(backbone, sample.classnames, templates, store)  # (C, D)
    source_pair = None
    if source is not None:
        source_pair = (store.image_features(backbone, source).numpy(), np.asarray(source.labels))
    extracted = time.perf_counter()
    cache = "miss" if store.misses > misses else "hit"
    if feats.shape[-1] != backbone.embed_dim or weights.shape[-1] != feats.shape[-1]:
        raise ShapeError(f"image features are {feats.shape[-1]}-d, text weights {weights.shape[-1]}-d and "
                         f"the model says {backbone.embed_dim}-d: the features come from another model; clear "
                         "the store entry (vlkit features) and rank again")
    scores = compute_metrics(feats.numpy(), np.asarray(sample.labels), weights.cpu().numpy(),
                             float(backbone.logit_scale), source_pair, seed=seed)
    done = time.perf_counter()
    return {"model": spec, "fingerprint": backbone.fingerprint, "embed_dim": backbone.embed_dim,
            "scores": scores, "cache": cache, "load_seconds": loaded - start,
            "features_seconds": extracted - loaded, "metrics_seconds": done - extracted,
            "seconds": done - start}


def rank_models(models: list[str], data: str, shots: int = 16, seed: int = 1, source: str | None = None,
                device: str | None = None, store: FeatureStore | None = None,
                on_model: Callable[[dict[str, Any]], None] | None = None,
                load: Callable[[str], Backbone] | None = None) -> dict[str, Any]:
    """Rank ``models`` for ``data`` from ``shots`` labelled images per class of its train split.

    ``source`` (a labelled source domain with the same classes, as in ``vlkit adapt``) adds
    OTCE. Returns ``{"rows": [...], "rankings": {metric: [model, ...]}, "recommendation":
    model, "failures": [{"model", "error"}], ...}``; each row holds the scores, the ranks
    (1 = best), the mean rank and the seconds spent loading, reading features (``cache``:
    hit or miss) and computing the metrics. ``load`` (spec -> Backbone; default
    :func:`load_ranked_model` on ``device``) lets a caller reuse models it already holds.
    """
    if not models:
        raise VlkitError("--models names no model: give a comma-separated list such as vlkit-mini,test-tiny")
    if len(set(models)) != len(models):
        raise VlkitError(f"--models lists a model twice: {', '.join(models)}")
    store = store or FeatureStore()
    pool = load_data(data, "train")  # the resolver refuses fewer than 2 classes
    sample = _train_sample(data, pool, shots, seed)
    templates = templates_for(pool)
    source_sample = None
    if source is not None:
        source_pool = load_data(source, "train")
        if source_pool.classnames != pool.classnames:
            raise VlkitError(f"--source {source} has other classes than {data} ({len(source_pool.classnames)} vs "
                             f"{len(pool.classnames)}): OTCE compares domains with one label set")
        source_sample = _train_sample(source, source_pool, shots, seed)
    rows, failures = [], []
    for spec in models:
        try:
            row = _score_model(spec, sample, source_sample, templates, store,
                               load or (lambda name: load_ranked_model(name, device)), seed)
        except VlkitError as exc:
            message = " ".join(str(exc).split())
            log.debug("%s: %s", spec, message)  # reported once, by the caller, from failures
            failures.append({"model": spec, "error": message})
            continue
        rows.append(row)
        if on_model is not None:
            on_model(row)
    order = rankings(rows)
    _mean_ranks(rows, order)
    best = _recommend(rows)
    return {"data": data, "source": source, "shots": shots, "seed": seed, "images": len(sample),
            "classes": len(pool.classnames), "metrics": {m: METRICS[m].paper for m in order},
            "rows": rows, "rankings": order, "recommendation": best,
            "recommendation_rule": "best mean rank over the metrics (ties: higher LogME)", "failures": failures}


def layer_scores(features: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """The metrics that read only features (LogME, H-scores, GBC, SFDA, NLEEP) on (N, D) ``features``:
    the zero-shot and text metrics need the final embedding space, which an inner layer lacks."""
    from vlkit.ranking.leep import nleep
    from vlkit.ranking.suite import FEATURE_METRICS

    scores = {name: fn(features, labels) for name, fn in FEATURE_METRICS.items()}
    scores["nleep"] = nleep(features, labels, seed=seed)
    return {name: scores[name] for name in METRICS if name in scores}


def rank_layers(model: str, data: str, shots: int = 16, seed: int = 1, device: str | None = None,
                store: FeatureStore | None = None) -> dict[str, Any]:
    """Rank the image-tower blocks of one ``model`` (and its final embedding) for ``data``.

    Each block's output is pooled as Head2Toe and LST read it (the class token and the
    patch-token mean, concatenated: (N, 2W)) from the store's per-layer entries
    (:meth:`~vlkit.features.store.FeatureStore.layer_features`), so a second ranking encodes
    nothing. Only the feature metrics apply to inner layers. Same result shape as
    :func:`rank_models`, one row per layer (``layer 0`` first, ``final`` last).
    """
    store = store or FeatureStore()
    pool = load_data(data, "train")
    sample = _train_sample(data, pool, shots, seed)
    labels = np.asarray(sample.labels)
    start = time.perf_counter()
    backbone = load_ranked_model(model, device)
    loaded = time.perf_counter()
    misses = store.misses
    layers = store.layer_features(backbone, sample).numpy()  # (N, depth, 2, W)
    final = store.image_features(backbone, sample).numpy()  # (N, D)
    extracted = time.perf_counter()
    cache = "miss" if store.misses > misses else "hit"
    named = [(f"layer {i}", layers[:, i].reshape(len(labels), -1)) for i in range(layers.shape[1])]
    rows = []
    for name, feats in named + [("final", final)]:
        begin = time.perf_counter()
        scores = layer_scores(feats, labels, seed)
        rows.append({"model": name, "fingerprint": backbone.fingerprint, "embed_dim": feats.shape[1],
                     "scores": scores, "cache": cache, "load_seconds": loaded - start,
                     "features_seconds": extracted - loaded, "metrics_seconds": time.perf_counter() - begin})
    order = rankings(rows)
    _mean_ranks(rows, order)
    best = _recommend(rows)
    return {"data": data, "model": model, "shots": shots, "seed": seed, "images": len(sample),
            "classes": len(pool.classnames), "metrics": {m: METRICS[m].paper for m in order},
            "pooling": "class token + patch-token mean per block (Head2Toe / LST inputs)",
            "rows": rows, "rankings": order, "recommendation": best,
            "recommendation_rule": "best mean rank over the feature metrics (ties: higher LogME)", "failures": []}
