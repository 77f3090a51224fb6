#!/usr/bin/env python
"""Two vlkit-mini image towers side by side: the few-shot methods at 1, 4 and 16 shots.

Each tower is a ``--pretrained`` image-tower file (``vlkit_mini_image.safetensors``) for
``load_backbone("vlkit-mini", FILE)``; every cell runs through ``vlkit.protocols.run_bench``
(the runner of ``vlkit bench``), so a re-run reuses finished cells. Issue 22's table: the
old (v1, emoji-only) and the new (v2, icon corpus) tower on Fashion-MNIST.

    git show 10ed565:vlkit/backbones/weights/vlkit_mini_image.safetensors > /tmp/v1.safetensors
    python benchmarks/mini_towers.py --old /tmp/v1.safetensors \\
        --new vlkit/backbones/weights/vlkit_mini_image.safetensors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cache_fewshot import table  # markdown mean +- std per method and shot count
from cache_search import provenance  # the one copy of the result-file keys (run as a script)
from vlkit.protocols import run_bench

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = "zero-shot,linear-probe,coop,tip-adapter,tip-adapter-f,ape,gda"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the old image-tower file")
    parser.add_argument("--new", type=Path, required=True, help="the new image-tower file")
    parser.add_argument("--data", default="fashion-mnist-mini")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--shots", default="1,4,16")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/mini_towers"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods, shots = args.methods.split(","), [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    towers, tables = {}, []
    for label, file in (("old", args.old), ("new", args.new)):
        bench = run_bench("vlkit-mini", str(file), [args.data], methods, shots, seeds, args.out / label,
                          schedule="quick")
        if bench["failed"]:
            raise SystemExit(f"{len(bench['failed'])} cells failed (see {bench['out']}/failed.jsonl); nothing written")
        markdown, summary = table(bench["records"], methods, shots)
        towers[label] = {"file": str(file), "top1": summary}
        tables.append(f"**{label} tower** (`{file.name}`)\n\n{markdown}")
    ratios = {}
    for m in methods:
        for s in shots:
            old, new = towers["old"]["top1"].get(m, {}).get(s), towers["new"]["top1"].get(m, {}).get(s)
            if old and new:
                ratios[f"{m}_{s}shot_new_over_old"] = round(new["mean"] / old["mean"], 3)
    header = (f"Top-1 (%) on {args.data} test, vlkit-mini with the old and the new image tower, mean ± std "
              f"over seeds {','.join(map(str, seeds))}; quick schedules; selection on validation.")
    behind = [name.removesuffix("_new_over_old") for name, ratio in ratios.items() if ratio < 1]
    claim = (f"the new tower beats the old in {len(ratios) - len(behind)} of {len(ratios)} (method, shots) cells"
             + (f"; not in {', '.join(behind)}" if behind else ""))
    doc = {"benchmark": "mini_towers", **provenance(args.threads), "title": header, "claim": claim,
           "data": args.data, "seeds": seeds, "ratios": ratios, "towers": towers}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mini_towers.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(header + "\n\n" + "\n\n".join(tables))


if __name__ == "__main__":
    main()
