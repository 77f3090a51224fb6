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
from vlkit.protocols.fewshot import run_fewshot
from vlkit.features.store import FeatureStore
from vlkit.io import atomic_write_json

log = logging.getLogger("vlkit.fewshot")
DEFAULT_SHOTS = (1, 4, 16)

# The "quick" schedule keeps the main job (every method at 1, 4 and 16 shots) under 3 minutes
# on 2 CPU cores. Cache models, probes and feature adapters run their paper schedules (they
# take seconds); prompt learners and tuners, which run an encoder tower at every step, get a
# short one. Every row records the settings it ran with; ``--schedule paper`` runs the papers'.
QUICK_SCHEDULES: dict[str, dict[str, Any]] = {
    # 2 iterations of 16 images per shot (CLIP-LoRA: 500 of 32), one validation check.
    "tuner": {"iters_per_shot": 2, "batch_size": 16, "val_checks": 1},
    # Prompt learners run the text tower every step; CoOp's 200 epochs at 16 shots take
    # ~1.5 minutes on 2 CPU cores with vlkit-mini's MiniLM text tower.
    "prompt": {"epochs": 5},
}
# So few tuner steps need larger learning rates: chosen on the validation split (Fashion-MNIST,
# vlkit-mini, one seed) for benchmarks/tuners_fewshot.py's CPU budget, which reads them here.
FEW_STEP_TUNER_LR = {"lora": 2e-3, "prefix-tuning": 1e-2, "bitfit": 1e-2, "ia3": 3e-2, "adapter": 1e-3,
                   "vpt-shallow": 1e-1, "vpt-deep": 1e-1}
# Methods whose quick schedule differs from their family's.
QUICK_METHOD_SCHEDULES: dict[str, dict[str, Any]] = {
    # MaPLe prompts both towers at every layer and encodes images each step: 1 of its 5 epochs.
    "maple": {"epochs": 1},
    # CoCoOp runs the text tower on every (image, class) pair at batch 1: its paper's 10 epochs
    # at 16 shots are 16,000 prompt passes (~90 s on 2 cores), so the quick run takes 1, unwarmed.
    "cocoop": {"epochs": 1, "warmup_epochs": 0},
    **{name: {**QUICK_SCHEDULES["tuner"], "lr": lr} for name, lr in FEW_STEP_TUNER_LR.items()},
}


def quick_settings(name: str) -> dict[str, Any]:
    """The quick schedule's options for method ``name`` ({} means its paper schedule)."""
    if name in QUICK_METHOD_SCHEDULES:
        return dict(QUICK_METHOD_SCHEDULES[name])
    return dict(QUICK_SCHEDULES.get(method_class(name).family, {}))


def fewshot_methods() -> list[str]:
    """Registered methods that fit a plain few-shot task (not domain adaptation), zero-shot first."""
    names = [m for m in list_methods() if method_class(m).task_kind == "fewshot"]
    return sorted(names, key=lambda m: m != "zero-shot")


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
                settings = quick_settings(name) if schedule == "quick" else {}
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
              "schedule": schedule,
              "quick_schedules": {m: quick_settings(m) for m in methods} if schedule == "quick" else {},
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


def by_method(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method for the terminal: top-1 per shot count (``"k-shot"`` keys, mean and
    std over seeds), then the cost at the largest shot count; ``*`` marks a quick schedule."""
    rows: dict[str, dict[str, Any]] = {}
    for r in sorted(summary, key=lambda r: r["shots"]):
        quick = "*" if r["schedule"] != "paper" else ""
        row = rows.setdefault(r["method"], {"method": r["method"] + quick})
        row[f"{r['shots']}-shot"] = f"{r['top1']:.1f}" + (f" ± {r['top1_std']:.1f}" if r["seeds"] > 1 else "")
        row.update({"params": r["trainable_parameters"], "fit s": round(r["fit_seconds"], 1),
                    "ms/img": round(r["latency_ms_per_image"], 2)})
    return list(rows.values())


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
