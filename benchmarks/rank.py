"""The transferability metrics of ``vlkit rank`` against the accuracy adaptation reaches.

Over the offline pool of ``benchmarks/rank_pool.py`` (10 encoders: vlkit-mini, test-tiny,
vlkit-mini training runs stopped at 100/300/800 steps, smaller and all-convolutional towers,
random-init towers), on Fashion-MNIST (fashion-mnist-mini), digits-mnist and
emoji-google-heldout:

1. every metric on the few-shot sample ``vlkit rank`` scores (``few_shot(train, shots, seed)``),
   once into an empty feature store (every feature a miss) and once again (every one a hit):
   the time per model with features uncached and cached;
2. the accuracy each model actually reaches: the 16-shot linear probe and Tip-Adapter-F
   (hyper-parameters and epochs selected on the data's val split), cells of the runner of
   ``vlkit bench`` (``runs/bench/rank/<member>/cells.jsonl``, resumable, paper schedules);
3. per dataset and per target method, each metric's Kendall tau (with its p-value) and
   weighted tau (``scipy.stats.weightedtau``, top ranks weigh more) against that accuracy.

emoji-google-heldout has 3 training images in its smallest classes, so it runs at 3 shots.
Writes ``benchmarks/results/rank.json``:

    python benchmarks/rank.py --threads 1                 # builds the pool first if missing
    python benchmarks/rank.py --threads 1 --seeds 1,2     # more seeds for the accuracies
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau, weightedtau

from cache_search import provenance  # the one copy of the result-file keys (run as a script)
from rank_pool import build_pool
from vlkit.features.store import FeatureStore
from vlkit.protocols import run_bench
from vlkit.protocols.ranking import load_ranked_model, rank_models
from vlkit.ranking import METRICS

RESULTS = Path(__file__).resolve().parent / "results" / "rank.json"
DATASETS = {"fashion-mnist-mini": 16, "digits-mnist": 16, "emoji-google-heldout": 3}
TARGETS = ["linear-probe", "tip-adapter-f"]


def member_name(spec: str) -> str:
    """A pool member's short name: the offline model or the run folder's name."""
    return Path(spec).name if "/" in spec else spec


def correlations(scores: dict[str, float], accuracy: dict[str, float]) -> dict[str, Any]:
    """Kendall tau, its p-value and the weighted tau of one metric against one accuracy, over models."""
    models = [m for m in scores if m in accuracy and np.isfinite(scores[m])]
    x = np.array([scores[m] for m in models])
    y = np.array([accuracy[m] for m in models])
    if len(models) < 3 or np.ptp(x) == 0:
        return {"tau": None, "p": None, "weighted_tau": None, "models": len(models)}
    tau, p = kendalltau(x, y)
    return {"tau": round(float(tau), 3), "p": round(float(p), 4), "weighted_tau": round(float(weightedtau(x, y)[0]), 3),
            "models": len(models)}


def accuracies(specs: list[str], backbones: dict[str, Any], data: str, shots: int, seeds: list[int],
               out: Path, test_per_class: int | None) -> dict[str, dict[str, float]]:
    """method -> member -> mean top-1 over seeds, through the runner (cells reused when present)."""
    table: dict[str, dict[str, float]] = {m: {} for m in TARGETS}
    for spec in specs:
        backbone = backbones[spec]
        bench = run_bench(backbone.name, backbone.pretrained, [data], TARGETS, [shots], seeds,
                          out / member_name(spec), schedule="paper", backbone=backbone, test_per_class=test_per_class)
        if bench["failed"]:
            raise SystemExit(f"{member_name(spec)} on {data}: {len(bench['failed'])} cells failed "
                             f"(see {bench['out']}/failed.jsonl)")
        for method in TARGETS:
            tops = [r["result"]["top1"] for r in bench["records"] if r["result"]["method"] == method]
            table[method][member_name(spec)] = round(float(np.mean(tops)), 2)
        print(f"{data} {member_name(spec)}: " + ", ".join(f"{m} {table[m][member_name(spec)]:.1f}" for m in TARGETS),
              flush=True)
    return table


def timing(cold: dict[str, Any], warm: dict[str, Any]) -> list[dict[str, Any]]:
    """Per member: features uncached (first pass, misses) and cached (second pass, hits), metric time."""
    rows = []
    for first, second in zip(cold["rows"], warm["rows"]):
        rows.append({"model": member_name(first["model"]), "embed_dim": first["embed_dim"],
                     "features_uncached_s": round(first["features_seconds"], 3), "cache_first": first["cache"],
                     "features_cached_s": round(second["features_seconds"], 3), "cache_second": second["cache"],
                     "metrics_s": round(second["metrics_seconds"], 3),
                     "total_uncached_s": round(first["features_seconds"] + first["metrics_seconds"], 3),
                     "total_cached_s": round(second["features_seconds"] + second["metrics_seconds"], 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1", help="comma-separated seeds for the accuracies (the metrics use the first)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--datasets", default=",".join(DATASETS), help="a comma-separated subset of " + ", ".join(DATASETS))
    ap.add_argument("--test-per-class", type=int, default=50, help="test images per class for the accuracies")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/rank"), help="the runner's folders, one per member")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    specs = build_pool(threads=args.threads)
    backbones = {spec: load_ranked_model(spec, "cpu") for spec in specs}
    per_data: dict[str, Any] = {}
    for data in args.datasets.split(","):
        shots = DATASETS[data]
        with tempfile.TemporaryDirectory(prefix="vlkit-rank-cold-") as cold_root:
            store = FeatureStore(cold_root)  # empty: the first pass encodes everything
            cold = rank_models(specs, data, shots, seeds[0], store=store, load=backbones.__getitem__)
            warm = rank_models(specs, data, shots, seeds[0], store=store, load=backbones.__getitem__)
        if cold["failures"]:
            raise SystemExit(f"{data}: {cold['failures']}")
        scores = {metric: {member_name(r["model"]): r["scores"][metric] for r in warm["rows"]}
                  for metric in cold["rankings"]}
        accuracy = accuracies(specs, backbones, data, shots, seeds, args.out, args.test_per_class)
        per_data[data] = {
            "shots": shots, "images": cold["images"], "classes": cold["classes"],
            "accuracy": accuracy, "scores": {m: {k: round(v, 5) for k, v in s.items()} for m, s in scores.items()},
            "correlation": {metric: {target: correlations(scores[metric], accuracy[target]) for target in TARGETS}
                            for metric in scores},
            "timing": timing(cold, warm), "recommendation": member_name(warm["recommendation"]),
        }
    write(args, specs, seeds, per_data, time.perf_counter() - t0)


def tau_table(per_data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric: ``tau (p) / weighted tau`` per dataset and target."""
    rows = []
    for metric in METRICS:
        row: dict[str, Any] = {"metric": metric}
        for data, block in per_data.items():
            for target in TARGETS:
                cell = block["correlation"].get(metric, {}).get(target)
                if cell and cell["tau"] is not None:
                    row[f"{data} {target}"] = f"{cell['tau']:+.2f} (p {cell['p']:.3f}) / {cell['weighted_tau']:+.2f}"
        if len(row) > 1:
            rows.append(row)
    return rows


def flat_tables(per_data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The per-dataset blocks as row tables (what RESULTS.md shows as Markdown tables)."""
    models = list(next(iter(per_data.values()))["accuracy"][TARGETS[0]])
    accuracy = [{"model": m, **{f"{d} {t}": b["accuracy"][t].get(m) for d, b in per_data.items() for t in TARGETS}}
                for m in models]
    scores = [{"data": d, "model": m, **{metric: b["scores"][metric].get(m) for metric in b["scores"]}}
              for d, b in per_data.items() for m in models]
    timing = [{"data": d, **row} for d, b in per_data.items() for row in b["timing"]]
    setup = [{"data": d, "shots": b["shots"], "images": b["images"], "classes": b["classes"],
              "recommendation": b["recommendation"]} for d, b in per_data.items()]
    return {"setup": setup, "accuracy": accuracy, "scores": scores, "timing": timing}


def write(args: argparse.Namespace, specs: list[str], seeds: list[int], per_data: dict[str, Any],
          seconds: float) -> None:
    """benchmarks/results/rank.json, the result-file convention."""
    fashion = per_data.get("fashion-mnist-mini", {}).get("correlation", {}).get("logme", {}).get("linear-probe", {})
    timing_rows = [r for block in per_data.values() for r in block["timing"]]
    ratio = float(np.median([r["total_cached_s"] / r["total_uncached_s"] for r in timing_rows]))
    doc = {"benchmark": "rank", **provenance(args.threads),
           "title": f"vlkit rank: transferability metrics against adapted accuracy over {len(specs)} offline encoders",
           "claim": (f"LogME's Kendall tau against the 16-shot linear probe on Fashion-MNIST is {fashion.get('tau')} "
                     f"(p {fashion.get('p')}) over {fashion.get('models')} encoders; with features cached a model "
                     f"is scored in {ratio:.2f} of its uncached time (median)"),
           "ratios": {"cached_over_uncached_seconds": round(ratio, 3)},
           "pool": [member_name(s) for s in specs], "pool_command": "python benchmarks/rank_pool.py --threads 1",
           "seeds": seeds, "test_per_class": args.test_per_class, "targets": TARGETS,
           "tau_table": tau_table(per_data), **flat_tables(per_data),
           "metrics": [{"metric": m, "paper": METRICS[m].paper} for m in METRICS if m != "otce"],
           "seconds": round(seconds, 1),
           "notes": "tau_table: Kendall tau (p-value) / weighted tau of each metric's scores against each target's "
                    "test top-1 (%) over the pool, per dataset; selection on the data's val split. OTCE needs a "
                    "labelled source domain and is not in this table."}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    for row in doc["tau_table"]:
        print(json.dumps(row))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
