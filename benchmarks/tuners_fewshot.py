"""Few-shot accuracy and cost of the feature adapters and tuners against zero-shot.

Every cell is a cell of ``vlkit.protocols.run_bench`` (selection on the validation split only,
the test split read once after fitting; resumable, one runner folder per label under
``--out``): top-1, trainable parameters, fit seconds and peak memory side by side. ``--iters-per-shot`` shortens the tuners' CLIP-LoRA budget
(500 iterations per shot) for a CPU run; the value used is recorded. ``--others`` adds
the prompt learners and cache models for the side-by-side table.

    python benchmarks/tuners_fewshot.py --model vlkit-mini --data fashion-mnist --shots 16 \
        --seeds 1 --cpu-budget --test-per-class 50 --methods ... coop tip-adapter-f
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from cache_search import provenance  # the one copy of the result-file keys (run as a script)
from vlkit.backbones.backbone import default_device
from vlkit.methods import list_methods, method_class
from vlkit.protocols import run_bench

RESULTS = Path(__file__).resolve().parent / "results"
# (label, registered name, options)
METHODS = [
    ("zero-shot", "zero-shot", {}), ("linear-probe", "linear-probe", {}),
    ("clip-adapter", "clip-adapter", {}), ("zs-linear-probe", "zs-linear-probe", {}), ("clap", "clap", {}),
    ("lp++", "lp++", {}),
    ("lora", "lora", {}), ("prefix-tuning", "prefix-tuning", {}), ("vpt-shallow", "vpt-shallow", {}),
    ("vpt-deep", "vpt-deep", {}), ("bitfit", "bitfit", {}), ("adapter-houlsby", "adapter", {"style": "houlsby"}),
    ("adapter-adaptformer", "adapter", {"style": "adaptformer"}), ("ia3", "ia3", {}),
]
OTHER_FAMILIES = ("prompt", "cache")
# --cpu-budget: 64 iterations of 16 images at 16 shots (CLIP-LoRA: 8000 of 32), so a shared
# 2-core CPU finishes; learning rates raised to match: each tuner's few-step rate, from its
# config's quick schedule (found on the validation split of one seed). VPT learns slowest and
# gets 4x the iterations.
_STEP = {"iters_per_shot": 4, "batch_size": 16}
FEW_STEP_TUNERS = ("lora", "prefix-tuning", "bitfit", "ia3", "vpt-shallow", "vpt-deep")


def few_step_lr(name: str) -> float:
    """The learning rate of tuner ``name``'s quick (few-step) schedule."""
    return method_class(name).Config.quick["lr"]


CPU_BUDGET = {
    "*": dict(_STEP),
    **{name: {**_STEP, "lr": few_step_lr(name), **({"iters_per_shot": 16} if name.startswith("vpt") else {})}
       for name in FEW_STEP_TUNERS},
    "adapter-houlsby": {**_STEP, "lr": few_step_lr("adapter")},
    "adapter-adaptformer": {**_STEP, "lr": 1e-2},
}


def plan(labels: list[str] | None, others: bool) -> list[tuple[str, str, dict]]:
    """The (label, name, options) cells to run."""
    chosen = [m for m in METHODS if labels is None or m[0] in labels]
    known = {m[0] for m in METHODS}
    chosen += [(n, n, {}) for n in labels or [] if n not in known and n in list_methods()]
    if others:
        chosen += [(n, n, {}) for n in list_methods() if method_class(n).family in OTHER_FAMILIES]
    return chosen


def tuner_budget(label: str, name: str, args: argparse.Namespace) -> dict:
    """The budget overrides for a tuner (none by default)."""
    out: dict = dict(CPU_BUDGET.get(label, CPU_BUDGET["*"])) if args.cpu_budget else {}
    if args.iters_per_shot is not None:
        out["iters_per_shot"] = args.iters_per_shot
    if args.tuner_batch_size is not None:
        out["batch_size"] = args.tuner_batch_size
    if args.tuner_lr_scale != 1.0:
        out["lr"] = method_class(name).Config().lr * args.tuner_lr_scale
    return out


def table(rows: list[dict], labels: list[str]) -> str:
    """Markdown: mean top-1 over seeds, trainable parameters, fit seconds, peak memory (MiB)."""
    lines = ["| method | family | top-1 | vs zero-shot | trainable | fit s | peak MiB |", "|" + "---|" * 7]
    zero = statistics.fmean(r["top1"] for r in rows if r["label"] == "zero-shot") if any(
        r["label"] == "zero-shot" for r in rows) else None
    for label in labels:
        cell = [r for r in rows if r["label"] == label]
        if not cell:
            continue
        top1 = statistics.fmean(r["top1"] for r in cell)
        delta = f"{top1 - zero:+.1f}" if zero is not None else "n/a"
        lines.append(f"| {label} | {cell[0]['family']} | {top1:.1f} | {delta} | {cell[0]['trainable_parameters']:,} | "
                     f"{statistics.fmean(r['fit_seconds'] for r in cell):.1f} | "
                     f"{statistics.fmean(r['peak_memory_bytes'] for r in cell) / 2**20:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vlkit-mini")
    parser.add_argument("--data", default="fashion-mnist", help="an offline dataset name")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--methods", nargs="+", default=None,
                        help="labels from the default list, or any registered method name")
    parser.add_argument("--others", action="store_true", help="add the prompt learners and cache models")
    parser.add_argument("--iters-per-shot", type=int, default=None, help="tuners' budget (default: 500, CLIP-LoRA)")
    parser.add_argument("--tuner-batch-size", type=int, default=None, help="tuners' batch (default: 32)")
    parser.add_argument("--tuner-lr-scale", type=float, default=1.0, help="multiply each tuner's default lr")
    parser.add_argument("--cpu-budget", action="store_true",
                        help="the short CPU schedule: CPU_BUDGET iterations and learning rates per tuner")
    parser.add_argument("--test-per-class", type=int, default=None, help="score on the first K test images per class")
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--device", default=None)
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=None,
                        help="runner folders, one per label (cells.jsonl, reports); default runs/bench/<benchmark>")
    args = parser.parse_args()
    name = "tuners_fewshot" + (f"-{args.tag}" if args.tag else "")
    out = args.out or Path("runs/bench") / name
    cells, rows = plan(args.methods, args.others), []
    for label, method, options in cells:
        if method_class(method).family == "tuner":
            options = {**options, **tuner_budget(label, method, args)}
        bench = run_bench(args.model, None, [args.data], [method], [args.shots], args.seeds, out / label,
                          device=args.device, views=args.views, schedule="paper", test_per_class=args.test_per_class,
                          settings={method: options} if options else None)
        if bench["failed"]:
            raise SystemExit(f"{label}: {len(bench['failed'])} cells failed (see {bench['out']}/failed.jsonl)")
        for record in bench["records"]:
            r = record["result"]
            rows.append({"label": label, "wall_seconds": r["wall_seconds"], **{k: r[k] for k in (
                "method", "family", "shots", "seed", "top1", "mean_per_class", "fit_seconds", "peak_memory_bytes",
                "memory_kind", "trainable_parameters", "artifact_bytes", "latency_ms_per_image")}})
            print(f"{label:20s} seed {r['seed']}: top-1 {r['top1']:.2f}  fit {r['fit_seconds']:.1f}s", file=sys.stderr)
    labels = [c[0] for c in cells]
    test_images = bench["records"][0]["result"]["test_size"]
    zero = statistics.fmean(r["top1"] for r in rows if r["label"] == "zero-shot")
    mine = [lab for lab, method, _ in cells if method_class(method).family in ("adapter", "tuner")]
    cell_seconds = sum(r.pop("wall_seconds") for r in rows)  # every cell's fit and score, resumed ones too
    margins = {lab: round(statistics.fmean(r["top1"] for r in rows if r["label"] == lab) - zero, 2) for lab in mine}
    result = {
        "benchmark": name,
        "title": f"Adapters and tuners vs zero-shot: {args.model} on {args.data}, {args.shots} shots "
                 f"({test_images} test images)",
        **provenance(torch.get_num_threads(), args.device or default_device()),
        "claim": f"each feature adapter and tuner beats zero-shot at {args.shots} shots (margin in top-1 points)",
        "ratios": {f"{lab}_minus_zero_shot": v for lab, v in margins.items()},
        "zero_shot_top1": zero, "iters_per_shot": args.iters_per_shot, "seeds": args.seeds,
        "tuner_batch_size": args.tuner_batch_size or 32, "tuner_lr_scale": args.tuner_lr_scale,
        "cpu_budget": CPU_BUDGET if args.cpu_budget else None,
        "test_images": test_images,
        "wall_seconds": round(cell_seconds, 1),
        "table": table(rows, labels), "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{result['benchmark']}.json").write_text(json.dumps(result, indent=1))
    print(result["table"])


if __name__ == "__main__":
    main()
