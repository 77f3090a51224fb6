"""Few-shot accuracy of the prompt learners against zero-shot, with fit time and parameters.

Every cell is ``vlkit.protocols.fewshot.run_fewshot`` (selection on the validation split only,
the test split read once after fitting). Prints a markdown table (mean +- std of top-1
over seeds) and writes benchmarks/results/prompts_fewshot[-<tag>].json.

    python benchmarks/prompts_fewshot.py --model vlkit-mini --data fashion-mnist \
        --shots 1 4 16 --seeds 1 2 3
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

import vlkit
from vlkit.data import first_per_class
from vlkit.data.offline import load_offline
from vlkit.protocols.fewshot import run_fewshot
from vlkit.features.store import FeatureStore

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ["zero-shot", "coop", "cocoop", "kgcoop", "defo", "maple"]


def cell_text(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def table(rows: list[dict], shots: list[int], methods: list[str]) -> str:
    """Markdown: one row per method; top-1 per shot count, then fit seconds and parameters at the most shots."""
    head = "| method | " + " | ".join(f"{s}-shot top-1" for s in shots) + f" | fit s ({shots[-1]}-shot) | trainable |"
    lines = [head, "|" + "---|" * (len(shots) + 3)]
    for m in methods:
        cells = [cell_text([r["top1"] for r in rows if r["method"] == m and r["shots"] == s]) for s in shots]
        last = [r for r in rows if r["method"] == m and r["shots"] == shots[-1]]
        fit = statistics.fmean(r["fit_seconds"] for r in last)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {fit:.1f} | {last[0]['trainable_parameters']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vlkit-mini")
    parser.add_argument("--data", default="fashion-mnist", help="an offline dataset name")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--test-per-class", type=int, default=0,
                        help="score the first N test images per class (0: all)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    backbone = vlkit.load_backbone(args.model, device=args.device)
    pool, test = load_offline(args.data, "train"), load_offline(args.data, "test")
    if args.test_per_class:
        test = first_per_class(test, args.test_per_class)
    store = FeatureStore()
    rows = []
    started = time.perf_counter()
    for shots in args.shots:
        for seed in args.seeds:
            for method in args.methods:
                r = run_fewshot(backbone, pool, test, method, shots, seed, store=store, views=args.views)
                rows.append({k: r[k] for k in ("method", "shots", "seed", "top1", "mean_per_class", "fit_seconds",
                                               "trainable_parameters", "artifact_bytes", "fit_info")})
                print(f"{method:10s} {shots:2d}-shot seed {seed}: top-1 {r['top1']:.2f}  fit {r['fit_seconds']:.1f}s",
                      file=sys.stderr)
    markdown = table(rows, args.shots, args.methods)
    result = {
        "benchmark": "prompts_fewshot" + (f"-{args.tag}" if args.tag else ""),
        "title": f"Prompt learners vs zero-shot: {args.model} on {args.data} ({len(test)} test images)",
        "command": shlex.join(["python", *sys.argv]),
        "machine": torch.cuda.get_device_name() if backbone.device.type == "cuda"
        else f"{platform.machine()}, {torch.get_num_threads()} threads",
        "claim": "16-shot CoOp, CoCoOp, KgCoOp, DeFo and MaPLe each beat zero-shot",
        "shots": args.shots, "seeds": args.seeds, "table": markdown, "rows": rows,
        "total_seconds": time.perf_counter() - started, "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{result['benchmark']}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
