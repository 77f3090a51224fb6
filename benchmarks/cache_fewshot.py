"""Few-shot accuracy of the cache family: 1/2/4/8/16 shots x seeds, against zero-shot.

Every cell is one ``vlkit.protocols.fewshot.run_fewshot`` call: sample ``shots`` per class (and
``min(shots, 4)`` validation images per class) from the training split, choose every
hyper-parameter and epoch on that validation sample, then score the test split once.
Cells are appended to ``benchmarks/results/cache_fewshot-<model>-<data>.jsonl`` as they
finish (a re-run skips the cells already there for the same weights); the mean +- std
table over seeds is printed and written next to it as Markdown and JSON.

    python benchmarks/cache_fewshot.py --model vlkit-mini --data fashion-mnist
    python benchmarks/cache_fewshot.py --model test-tiny --data fashion-mnist-mini --shots 1,4 --seeds 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cache_search import provenance  # the one copy of the result-file keys (run as a script)
from vlkit.backbones import load_backbone
from vlkit.data.offline import load_offline
from vlkit.protocols.fewshot import run_fewshot
from vlkit.features.store import FeatureStore

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = "zero-shot,tip-adapter,tip-adapter-f,ape,ape-t,tip-x,gda"


def load_cells(path: Path, fingerprint: str) -> dict[tuple, dict]:
    """Finished cells of this backbone (its weights' ``fingerprint``), keyed by (method, shots, seed).

    Cells of other weights (an older vlkit-mini, say) stay in the file but are not reused.
    """
    cells = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if row.get("fingerprint") == fingerprint:
                cells[(row["method"], row["shots"], row["seed"])] = row
    return cells


def table(cells: dict[tuple, dict], methods: list[str], shots: list[int], seeds: list[int]) -> tuple[str, dict]:
    """Markdown mean +- std of top-1 per method and shot count, and the same numbers as a dict."""
    summary: dict = {}
    lines = ["| method | " + " | ".join(f"{s}-shot" for s in shots) + " |",
             "|---|" + "---:|" * len(shots)]
    for m in methods:
        cols = []
        for s in shots:
            accs = [cells[(m, s, seed)]["top1"] for seed in seeds if (m, s, seed) in cells]
            if not accs:
                cols.append("")
                continue
            mean = statistics.fmean(accs)
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            summary.setdefault(m, {})[s] = {"mean": mean, "std": std, "n": len(accs)}
            cols.append(f"{mean:.2f} ± {std:.2f}")
        lines.append(f"| {m} | " + " | ".join(cols) + " |")
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vlkit-mini")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--shots", default="1,2,4,8,16")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--views", type=int, default=10, help="cached augmented views per training image")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods, shots = args.methods.split(","), [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    backbone = load_backbone(args.model)
    pool, test = load_offline(args.data, "train"), load_offline(args.data, "test")
    store = FeatureStore()
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"cache_fewshot-{args.model}-{args.data}"
    log_path = stem.with_suffix(".jsonl")
    cells = load_cells(log_path, backbone.fingerprint)
    for seed in seeds:
        for s in shots:
            for m in methods:
                if (m, s, seed) in cells:
                    continue
                start = time.perf_counter()
                row = run_fewshot(backbone, pool, test, m, shots=s, seed=seed, store=store, views=args.views)
                row["wall_s"], row["fingerprint"] = time.perf_counter() - start, backbone.fingerprint
                cells[(m, s, seed)] = row
                with open(log_path, "a") as handle:
                    handle.write(json.dumps(row, default=str) + "\n")
                print(f"seed {seed} {s:>2}-shot {m:<14} top1 {row['top1']:6.2f}  fit {row['fit_seconds']:6.2f} s  "
                      f"params {row['trainable_parameters']}", flush=True)
    markdown, summary = table(cells, methods, shots, seeds)
    header = (f"Top-1 (%) on {args.data} test ({len(test)} images), {args.model}, mean ± std over seeds "
              f"{','.join(map(str, seeds))}; hyper-parameters and epochs chosen on the few-shot validation sample.\n\n")
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
