"""Scoring with per-image prompts (CoCoOp): one padded text-tower pass against one pass per prompt length.

CoCoOp scores N images x C classes prompts through the text tower. On a bidirectional,
padded tower (vlkit-mini's MiniLM) the padding is masked out, so a sequence's output does
not depend on how far it is padded: ``HFTextTower.encode_embeddings`` runs a batch of at
least ``BUCKET_FROM`` prompts as one pass per distinct length instead of one pass padded to
the longest. Both are timed here side by side, alternating, on the same contexts (the
class names of the data, one context per image as CoCoOp's meta-net makes them), with the
largest difference between their outputs.

    python benchmarks/prompt_scoring.py                     # fashion-mnist-mini names, 400 images
    python benchmarks/prompt_scoring.py --images 100 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent


def time_pass(encoder, contexts: torch.Tensor, bucket_from: int) -> tuple[float, torch.Tensor]:
    """Seconds for ``encoder.encode(contexts)`` with ``BUCKET_FROM = bucket_from``, and its (G, C, D) output."""
    tower = type(encoder.tower)
    saved, tower.BUCKET_FROM = tower.BUCKET_FROM, bucket_from
    try:
        start = time.perf_counter()
        with torch.no_grad():
            out = encoder.encode(contexts, fast=True)
        return time.perf_counter() - start, out
    finally:
        tower.BUCKET_FROM = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist-mini")
    parser.add_argument("--images", type=int, default=400, help="contexts (images) scored at once")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; the best of each is kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "prompt_scoring.json")
    args = parser.parse_args()
    import vlkit
    from vlkit.prompts.encoder import PromptedTextEncoder

    torch.set_num_threads(args.threads)
    backbone = vlkit.load_backbone("vlkit-mini", device="cpu")
    classnames = list(vlkit.load_data(args.data, "test").classnames)
    encoder = PromptedTextEncoder(backbone, classnames, init="a photo of a")
    generator = torch.Generator().manual_seed(0)
    contexts = encoder.ctx.detach()[None] + 0.05 * torch.randn(args.images, *encoder.ctx.shape, generator=generator)
    lengths = (encoder.tokens != backbone.text.pad_id).sum(1)  # (C,)
    padded, bucketed = [], []
    for _ in range(args.repeats):
        seconds, reference = time_pass(encoder, contexts, 1 << 30)
        padded.append(seconds)
        seconds, out = time_pass(encoder, contexts, type(backbone.text).BUCKET_FROM)
        bucketed.append(seconds)
    record = {
        "benchmark": "prompt_scoring",
        "title": "CoCoOp-style scoring (images x classes prompts) on vlkit-mini's MiniLM: one pass per prompt "
                 "length against one padded pass",
        "command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/prompt_scoring.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, cpu",
        "date": time.strftime("%Y-%m-%d"),
        "claim": "per-length passes cost less than one pass padded to the longest name (ratio below 1) and give "
                 "the same features (max_abs_diff ~0)",
        "load_average": round(os.getloadavg()[0], 2),
        "prompts": int(args.images * len(classnames)),
        "token_lengths": sorted(lengths.tolist()),
        "padding_share": round(1 - float(lengths.float().mean() / lengths.max()), 3),
        "padded_seconds": round(min(padded), 3),
        "per_length_seconds": round(min(bucketed), 3),
        "ratios": {"per_length_over_padded": round(min(bucketed) / min(padded), 3)},
        "max_abs_diff": float((out - reference).abs().max()),
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
