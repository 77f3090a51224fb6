"""Few-shot accuracy of the prompt learners against zero-shot, with fit time and parameters.

Every cell is a cell of ``vlkit.protocols.run_bench`` (paper schedules; selection on the
validation split only, the test split read once after fitting; resumable in ``--out``).
Prints a markdown table (mean +- sample std of top-1 over seeds) and writes
benchmarks/results/prompts_fewshot[-<tag>].json.

    python benchmarks/prompts_fewshot.py --model vlkit-mini --data fashion-mnist \
        --shots 1 4 16 --seeds 1 2 3
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
from vlkit.protocols import run_bench
from vlkit.report.summary import Stat

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ["zero-shot", "coop", "cocoop", "kgcoop", "defo", "maple"]


def cell_text(values: list[float]) -> str:
    """``"71.3 ± 0.4"`` over seeds (sample std; no ``±`` part for one seed)."""
    return Stat(values).text(1)


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
    parser.add_argument("--out", type=Path, default=None,
                        help="the runner's folder (cells.jsonl, reports); default runs/bench/<benchmark name>")
    args = parser.parse_args()
    name = "prompts_fewshot" + (f"-{args.tag}" if args.tag else "")

    def report_cell(r: dict) -> None:
        print(f"{r['method']:10s} {r['shots']:2d}-shot seed {r['seed']}: top-1 {r['top1']:.2f}  "
              f"fit {r['fit_seconds']:.1f}s", file=sys.stderr)

    bench = run_bench(args.model, None, [args.data], args.methods, args.shots, args.seeds,
                      args.out or Path("runs/bench") / name, device=args.device, views=args.views, schedule="paper",
                      test_per_class=args.test_per_class or None, on_result=report_cell)
    if bench["failed"]:
        raise SystemExit(f"{len(bench['failed'])} cells failed (see {bench['out']}/failed.jsonl); nothing written")
    rows = [{k: r["result"][k] for k in ("method", "shots", "seed", "top1", "mean_per_class", "fit_seconds",
                                         "trainable_parameters", "artifact_bytes", "fit_info")}
            for r in bench["records"]]
    markdown = table(rows, args.shots, args.methods)
    result = {
        "benchmark": name,
        "title": f"Prompt learners vs zero-shot: {args.model} on {args.data} "
                 f"({bench['records'][0]['result']['test_size']} test images)",
        **provenance(torch.get_num_threads(), args.device or default_device()),
        "claim": "16-shot CoOp, CoCoOp, KgCoOp, DeFo and MaPLe each beat zero-shot",
        "shots": args.shots, "seeds": args.seeds, "table": markdown, "rows": rows,
        "total_seconds": sum(r["result"]["wall_seconds"] for r in bench["records"]),  # every cell's, resumed too
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{result['benchmark']}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
