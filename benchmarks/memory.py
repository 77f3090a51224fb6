"""Training memory against full fine-tuning (issue 19): the table on vlkit-mini, and ViT-B/32 ratios.

Part 1 (the table): full fine-tuning, WiSE-FT, LoRA, VPT-deep, adapters, BitFit, TinyTL,
LST, Head2Toe and the linear probe (zero-shot for reference) through
``vlkit.protocols.run_bench`` (the runner of ``vlkit bench``: resumable cells under
``--out``): accuracy (mean ± sample std over seeds), trainable parameters, artifact bytes,
fit seconds and training memory (peak above the loaded model during ``fit``, measured by
``vlkit.protocols.scoring.measure`` as for every result; per image of the training batch).
The tower-running methods use their quick schedules (``--schedule``); LST and Head2Toe read
the per-layer features from the store (encoded before ``fit``, so not in its memory).

Part 2 (ViT-B/32): open_clip's ViT-B-32 configuration with random weights (no download);
each method's training step (forward, backward, AdamW step) at the same batch of random
224-px images on CPU, each in a fresh process, measured by the same ``measure``: peak RSS
above the loaded model, and its ratio to full fine-tuning's. LST and Head2Toe are measured
twice: running the frozen tower at each step without gradient (as the papers train), and
from stored per-layer features (as vlkit trains them).

    python benchmarks/memory.py                                  # both parts
    python benchmarks/memory.py --seeds 1 --skip-vit             # a quick table only
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cache_search import provenance  # the one copy of the result-file keys (run as a script)

RESULTS = Path(__file__).resolve().parent / "results"
TABLE_METHODS = ["zero-shot", "linear-probe", "full-finetune", "wise-ft", "lora", "vpt-deep", "adapter", "bitfit",
                 "tinytl", "lst", "head2toe"]
IMAGE_TOWER = {"lora": {"tower": "image"}, "adapter": {"tower": "image"}, "bitfit": {"tower": "image"}}
VIT_STEPS = ["full-finetune", "lora", "vpt-deep", "adapter", "bitfit", "tinytl", "lst", "lst-store", "head2toe",
             "head2toe-store", "linear-probe"]


# ---- part 1: the table through the runner ------------------------------------------------------------
def run_table(args: argparse.Namespace) -> dict[str, Any]:
    """Every method x seed at ``args.shots`` through run_bench; mean accuracy and cost per method."""
    from vlkit.protocols import run_bench
    from vlkit.report.summary import summarize

    seeds = [int(s) for s in args.seeds.split(",")]
    bench = run_bench(args.model, None, [args.data], TABLE_METHODS, [args.shots], seeds, args.out,
                      schedule=args.schedule, settings=IMAGE_TOWER, views=args.views, on_result=_report_cell)
    if bench["failed"]:
        raise SystemExit(f"{len(bench['failed'])} cells failed (see {args.out}/failed.jsonl); nothing written")
    rows = []
    for row in sorted(summarize(bench["records"]), key=lambda r: TABLE_METHODS.index(r.method)):
        top1, cost = row.metrics["top1"], row.cost
        rows.append({"method": row.method, "top1": round(top1.mean, 2), "top1_std": round(top1.std, 2),
                     "seeds": top1.n, "trainable_parameters": int(cost["trainable_parameters"]),
                     "artifact_bytes": int(cost["artifact_bytes"]), "fit_seconds": round(cost["fit_seconds"], 2),
                     "train_memory_mib": _scaled(cost.get("train_memory_bytes"), 2**20),
                     "train_memory_per_image_kib": _scaled(cost.get("train_memory_per_image_bytes"), 2**10)})
    settings = {r["cell"]["method"]: r["result"]["settings"] for r in bench["records"]}
    return {"rows": rows, "settings": settings, "test_size": bench["records"][0]["result"]["test_size"]}


def _scaled(value: float | None, unit: int) -> float | None:
    """``value / unit`` to 0.1, None when not measured (no batch: the probes fit on all rows at once)."""
    return None if value is None else round(value / unit, 1)


def _report_cell(result: dict[str, Any]) -> None:
    print(f"seed {result['seed']} {result['method']:<14} top1 {result['top1']:6.2f}  fit {result['fit_seconds']:6.2f} s"
          f"  train memory {(result.get('train_memory_bytes') or 0) / 2**20:7.1f} MiB", flush=True)


# ---- part 2: one training step on ViT-B/32 in a fresh process ------------------------------------------
def step_memory(name: str, model: str, batch: int, classes: int = 10) -> dict[str, Any]:
    """Peak memory above the loaded model of one training step of ``name`` at ``batch`` images (this process)."""
    import vlkit
    from vlkit.features.layer_features import layer_shape, layer_tokens
    from vlkit.methods import create_method
    from vlkit.methods.intermediate.head2toe import head_to_toe_features
    from vlkit.protocols.scoring import measure

    backbone = vlkit.load_backbone(model, device="cpu")
    torch.manual_seed(0)
    x = torch.randn(batch, 3, backbone.image_size, backbone.image_size)  # (B, 3, S, S)
    y = torch.arange(batch) % classes
    weights = F.normalize(torch.randn(classes, backbone.embed_dim), dim=-1)  # (C, D)
    depth, pooled, width = layer_shape(backbone)
    base = name.removesuffix("-store")
    if base in ("lst", "head2toe", "linear-probe"):
        stored = name.endswith("-store")
        if base == "lst":
            method = create_method("lst")
            method.logit_scale_, method.text_weights_ = backbone.logit_scale, weights
            head = method.build(backbone)
            method.side_ = head
            classify = method.head_logits
        else:
            features = depth * pooled * width + backbone.embed_dim if base == "head2toe" else backbone.embed_dim
            head = torch.nn.Linear(features, classes)

            def classify(layers, final):
                return head(head_to_toe_features(layers, final) if base == "head2toe" else final)
        params = list(head.parameters())
        cached = (F.normalize(torch.randn(batch, backbone.embed_dim), dim=-1),
                  torch.randn(batch, depth, pooled, width)) if stored else None

        def loss() -> torch.Tensor:
            final, layers = cached if stored else layer_tokens(backbone, x)  # no gradient into the tower
            return F.cross_entropy(classify(layers, F.normalize(final, dim=-1)), y)
    else:
        method = create_method(name, **IMAGE_TOWER.get(name, {}))
        method.classnames_, method.templates_ = [f"class {i}" for i in range(classes)], ["a photo of a {}."]
        tuned = method.build(backbone)
        params = list(tuned.parameters_to_train().values())
        head = getattr(tuned.model, "class_head", weights)

        def loss() -> torch.Tensor:
            return F.cross_entropy(backbone.logit_scale * tuned.encode_images(x) @ head.T, y)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    with measure("cpu") as cost:
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"method": name, "batch": batch, "train_memory_bytes": cost["train_memory_bytes"],
            "seconds": round(cost["seconds"], 2), "trainable_parameters": int(sum(p.numel() for p in params))}


def run_vit(args: argparse.Namespace) -> dict[str, Any]:
    """Each step in a fresh process; ratios to full fine-tuning's training memory."""
    rows = []
    for name in VIT_STEPS:
        out = subprocess.run([sys.executable, __file__, "--step", name, "--vit", args.vit, "--vit-batch",
                              str(args.vit_batch), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{args.vit} {name:<15} batch {row['batch']}: {row['train_memory_bytes'] / 2**20:8.1f} MiB "
              f"in {row['seconds']} s", flush=True)
    full = next(r["train_memory_bytes"] for r in rows if r["method"] == "full-finetune")
    for row in rows:
        row["train_memory_mib"] = round(row.pop("train_memory_bytes") / 2**20, 1)
        row["over_full_finetune"] = round(row["train_memory_mib"] * 2**20 / full, 3)
    return {"rows": rows}


def markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table of ``rows`` over ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    lines += ["| " + " | ".join("-" if r[c] is None else f"{r[c]:,}" if isinstance(r[c], int) else str(r[c])
                                for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vlkit-mini")
    parser.add_argument("--data", default="fashion-mnist-mini")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--schedule", default="quick", help="quick (the tower methods' short schedules) or paper")
    parser.add_argument("--vit", default="ViT-B-32", help="open_clip config for part 2 (random weights)")
    parser.add_argument("--vit-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)  # internal: one step, JSON on stdout
    parser.add_argument("--out", type=Path, default=Path("runs/bench/memory"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.step:
        print(json.dumps(step_memory(args.step, args.vit, args.vit_batch)))
        return
    doc: dict[str, Any] = {"benchmark": "memory", **provenance(args.threads),
                           "title": f"Training memory against full fine-tuning: {args.model} on {args.data}, "
                                    f"{args.shots} shots; {args.vit} (random weights) per training step",
                           "claim": "LST's training memory is at most 0.4 of full fine-tuning's and below LoRA's "
                                    f"({args.vit}, CPU, batch {args.vit_batch})",
                           "notes": "Training memory is the peak above the loaded model during fit (table) or one "
                                    "training step (ViT rows), CPU RSS sampled every 5 ms after freed memory is handed "
                                    "back to the OS. LST and Head2Toe in the table train from stored per-layer "
                                    "features (encoded before fit); the ViT rows show both ways. vlkit's LoRA runs "
                                    "attention through split q/k/v views (unfused projections, dropout on their "
                                    "inputs), which keep more activations than the fused attention full fine-tuning "
                                    "runs through; full fine-tuning's peak is mostly its gradients and AdamW state. "
                                    "The linear probe and zero-shot have no batch (no per-image column)."}
    if not args.skip_table:
        table = run_table(args)
        doc.update({"model": args.model, "data": args.data, "shots": args.shots, "seeds": args.seeds,
                    "schedule": args.schedule, "test_size": table["test_size"], "settings": table["settings"],
                    "rows": table["rows"]})
        print(markdown(table["rows"], list(table["rows"][0])), "\n")
    if not args.skip_vit:
        vit = run_vit(args)
        by = {r["method"]: r["over_full_finetune"] for r in vit["rows"]}
        doc["ratios"] = {f"{m.replace('-', '_')}_over_full_finetune": by[m] for m in by if m != "full-finetune"}
        doc["ratios"]["lst_over_lora"] = round(by["lst"] / by["lora"], 3)
        doc.update({"vit_model": args.vit, "vit_batch": args.vit_batch, "vit_rows": vit["rows"]})
        print(markdown(vit["rows"], ["method", "batch", "train_memory_mib", "over_full_finetune",
                                     "trainable_parameters", "seconds"]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
