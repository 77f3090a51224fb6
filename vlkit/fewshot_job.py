"""The main job: every registered few-shot method at several shot counts, with cost."""
from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any, Sequence

from vlkit.backbones import load_backbone
from vlkit.data.resolve import load_data
from vlkit.errors import VlkitError
from vlkit.methods import list_methods, method_class
from vlkit.pipeline import run_fewshot
from vlkit.store import FeatureStore, atomic_write_json

log = logging.getLogger("vlkit.fewshot")
DEFAULT_SHOTS = (1, 4, 16)

# The "quick" schedule keeps the main job within minutes on a laptop CPU. Cache models,
# probes and feature adapters run their paper schedules (they take seconds); prompt
# learners and tuners, which run an encoder tower at every step, get a short one. Every row
# records the settings it ran with, and ``--schedule paper`` runs the papers' own.
QUICK_SCHEDULES: dict[str, dict[str, Any]] = {
    "tuner": {"iters_per_shot": 4, "val_checks": 2},
    # Prompt learners run the text tower every step; CoOp's 200 epochs at 16 shots take
    # ~7 minutes on 2 CPU cores with vlkit-mini's MiniLM text tower.
    "prompt": {"epochs": 10},
}


def fewshot_methods() -> list[str]:
    """Registered methods that fit a plain few-shot task (not domain adaptation)."""
    return [m for m in list_methods() if method_class(m).task_kind == "fewshot"]


def run_fewshot_job(model: str = "vlkit-mini", pretrained: str | None = None, data: str = "fashion-mnist-mini",
                    methods: Sequence[str] | None = None, shots: Sequence[int] = DEFAULT_SHOTS,
                    seeds: Sequence[int] = (1,), out_dir: Path = Path("runs/fewshot"), views: int = 10,
                    device: str | None = None, on_result: Any = None, schedule: str = "quick") -> dict[str, Any]:
    """Fit and score each method x shots x seed; write ``results.json`` and a PNG plot.

    A method that fails is recorded with its error and the job goes on; the caller
    decides the exit code from ``failures``.
    """
    methods = list(methods or fewshot_methods())
    if schedule not in ("quick", "paper"):
        raise VlkitError(f"schedule must be quick or paper, got {schedule!r}")
    for name in methods:
        method_class(name)  # unknown names fail before any work
    backbone = load_backbone(model, pretrained, device)
    pool, test = load_data(data, "train"), load_data(data, "test")
    store = FeatureStore()
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for name in methods:
        for k in shots:
            for seed in seeds:
                settings = QUICK_SCHEDULES.get(method_class(name).family, {}) if schedule == "quick" else {}
                try:
                    row = run_fewshot(backbone, pool, test, name, k, seed, store=store, views=views, **settings)
                    row["schedule"] = "paper" if not settings else "quick: " + ", ".join(
                        f"{key}={value}" for key, value in settings.items())
                except VlkitError as exc:
                    failures.append({"method": name, "shots": k, "seed": seed, "error": str(exc)})
                    log.error("%s at %d shots failed: %s", name, k, exc)
                    continue
                rows.append(row)
                if on_result:
                    on_result(row)
    out_dir = Path(out_dir)
    result = {"model": model, "pretrained": pretrained, "data": data, "shots": list(shots), "seeds": list(seeds),
              "schedule": schedule, "quick_schedules": QUICK_SCHEDULES if schedule == "quick" else {},
              "rows": rows, "summary": summarise(rows), "failures": failures}
    atomic_write_json(out_dir / "results.json", result)
    result["plot"] = str(plot_accuracy_vs_shots(result["summary"], out_dir / "accuracy_vs_shots.png",
                                                f"{model} on {data}"))
    return result


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and std over seeds) of accuracy and cost per method and shot count."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["shots"]), []).append(row)
    summary = []
    for (name, k), group in groups.items():
        top1 = [r["top1"] for r in group]
        summary.append({
            "method": name, "shots": k, "seeds": len(group), "schedule": group[0].get("schedule", "paper"),
            "top1": statistics.fmean(top1),
            "top1_std": statistics.pstdev(top1) if len(top1) > 1 else 0.0,
            "mean_per_class": statistics.fmean(r["mean_per_class"] for r in group),
            "trainable_parameters": group[0]["trainable_parameters"],
            "artifact_bytes": group[0]["artifact_bytes"],
            "fit_seconds": statistics.fmean(r["fit_seconds"] for r in group),
            "peak_memory_mb": max(r["peak_memory_bytes"] for r in group) / 2**20,
            "latency_ms_per_image": statistics.fmean(r["latency_ms_per_image"] for r in group),
        })
    return summary


def plot_accuracy_vs_shots(summary: list[dict[str, Any]], path: Path, title: str) -> Path:
    """One line per method: top-1 accuracy against shots (log-2 axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["method"] for r in summary):
        points = sorted((r["shots"], r["top1"], r["top1_std"]) for r in summary if r["method"] == name)
        xs, ys, es = zip(*points)
        style = "--" if name == "zero-shot" else "-"
        ax.errorbar(xs, ys, yerr=es, marker="o", linestyle=style, capsize=3, label=name)
    ax.set_xscale("log", base=2)
    shots = sorted({r["shots"] for r in summary})
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set_xlabel("labelled images per class (shots)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
