"""Few-shot accuracy of the cache family: 1/2/4/8/16 shots x seeds, against zero-shot.

Every cell is one cell of ``vlkit.protocols.run_bench`` (the runner of ``vlkit bench``,
paper schedules): sample ``shots`` per class (and ``min(shots, 4)`` validation images per
class) from the training split, choose every hyper-parameter and epoch on that validation
sample, then score the test split once. Cells are stored in the runner's resumable
``cells.jsonl`` under ``--out`` (a re-run skips the cells already there for the same
weights); the mean +- std table over seeds (sample std) is printed and written to
``benchmarks/results/cache_fewshot-<model>-<data>.{md,json}``.

    python benchmarks/cache_fewshot.py --model vlkit-mini --data fashion-mnist
    python benchmarks/cache_fewshot.py --model test-tiny --data fashion-mnist-mini --shots 1,4 --seeds 1
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from cache_search import provenance  # the one copy of the result-file keys (run as a script)
from vlkit.protocols import run_bench
from vlkit.report.summary import summarize

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = "zero-shot,tip-adapter,tip-adapter-f,ape,ape-t,tip-x,gda"


def table(records: Sequence[dict[str, Any]], methods: list[str], shots: list[int]) -> tuple[str, dict]:
    """Markdown mean +- std of top-1 per method and shot count, and the same numbers as a dict."""
    stats = {(row.method, row.shots): row.metrics["top1"] for row in summarize(records)}
    summary: dict = {}
    lines = ["| method | " + " | ".join(f"{s}-shot" for s in shots) + " |",
             "|---|" + "---:|" * len(shots)]
    for m in methods:
        cols = []
        for s in shots:
            stat = stats.get((m, s))
            if stat is None:
                cols.append("")
                continue
            summary.setdefault(m, {})[s] = {"mean": stat.mean, "std": stat.std, "n": stat.n}
            cols.append(f"{stat.mean:.2f} ± {stat.std:.2f}")
        lines.append(f"| {m} | " + " | ".join(cols) + " |")
    return "\n".join(lines), summary


def report_cell(result: dict[str, Any]) -> None:
    """One line per finished cell on stdout."""
    print(f"seed {result['seed']} {result['shots']:>2}-shot {result['method']:<14} top1 {result['top1']:6.2f}  "
          f"fit {result['fit_seconds']:6.2f} s  params {result['trainable_parameters']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vlkit-mini")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--shots", default="1,2,4,8,16")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--views", type=int, default=10, help="cached augmented views per training image")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None,
                        help="the runner's folder (cells.jsonl, reports); default runs/bench/cache_fewshot-MODEL-DATA")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods, shots = args.methods.split(","), [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    name = f"cache_fewshot-{args.model}-{args.data}"
    bench = run_bench(args.model, None, [args.data], methods, shots, seeds, args.out or Path("runs/bench") / name,
                      views=args.views, schedule="paper", on_result=report_cell)
    if bench["failed"]:
        raise SystemExit(f"{len(bench['failed'])} cells failed (see {bench['out']}/failed.jsonl); nothing written")
    records = bench["records"]
    markdown, summary = table(records, methods, shots)
    header = (f"Top-1 (%) on {args.data} test ({records[0]['result']['test_size']} images), {args.model}, "
              f"mean ± std over seeds {','.join(map(str, seeds))}; hyper-parameters and epochs chosen on the "
              f"few-shot validation sample.\n\n")
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / name
    stem.with_suffix(".md").write_text(header + markdown + "\n")
    rows = [{"method": m, **{f"{s}-shot": f"{v['mean']:.2f} ± {v['std']:.2f}" for s, v in summary.get(m, {}).items()}}
            for m in methods]
    doc = {"benchmark": "cache_fewshot", **provenance(args.threads),
           "title": header.split(";")[0], "claim": "16-shot Tip-Adapter, Tip-Adapter-F, APE and GDA each beat "
           "zero-shot; Tip-Adapter-F beats Tip-Adapter (mean top-1 over seeds)",
           "model": args.model, "data": args.data, "seeds": seeds, "rows": rows, "top1": summary}
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    print(header + markdown)


if __name__ == "__main__":
    main()
