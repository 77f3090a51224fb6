"""CoOp epoch time: the reference design against vlkit's, side by side in one run.

reference (the authors' Dassl trainer): every batch decodes its JPEGs, applies the random
  crop + flip, re-encodes them with the frozen image tower, and runs the text tower over
  all context positions (77 for CLIP) for the C prompts.
vlkit: ``create_method("coop")`` on cached features: each epoch picks one of the cached
  augmented views per image, and the text tower runs trimmed after the last end token
  with the prompt prefix shared by all classes computed once (exact).

Both start from the same context vectors and run the same optimiser, schedule, batches
per epoch and epochs; both are then scored on the same test images. The one-off cost of
caching the views is reported separately (it is shared by every method and run).
Wall and process CPU seconds are both reported: the CPU clock is the fairer one on a
shared machine (run with OMP_WAIT_POLICY=PASSIVE there, so that OpenMP threads waiting for
a descheduled partner do not spin and bill the small-matrix side for the contention). Writes benchmarks/results/coop_speed[-<tag>].json.

    python benchmarks/coop_speed.py --model ViT-B-32 --epochs 2          # random weights: timing
    python benchmarks/coop_speed.py --model vlkit-mini --epochs 50 --tag mini   # accuracy side by side
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import vlkit
from vlkit.data import ImageDataset, few_shot
from vlkit.data.offline import load_offline
from vlkit.protocols.scoring import accuracy
from vlkit.methods import create_method
from vlkit.protocols.scoring import method_logits
from vlkit.prompts.encoder import PromptedTextEncoder
from vlkit.features.store import FeatureStore
from vlkit.methods.task import Task
from vlkit.methods.training import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"


def as_jpegs(dataset: ImageDataset, root: Path, size: int) -> ImageDataset:
    """The dataset's images written as ``size`` px RGB JPEGs (decode cost like photos)."""
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i, (_, label) in enumerate(dataset.items):
        path = root / f"{i:05d}.jpg"
        dataset.image(i).convert("RGB").resize((size, size)).save(path, quality=90)
        items.append((str(path), label))
    return ImageDataset(items, dataset.classnames, name=dataset.name, templates=dataset.templates)


def full_text_tower(backbone, embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The reference text encoder: every context position (CoOp's ``TextEncoder``)."""
    tower = backbone.text
    owner = getattr(tower, "owner", None)
    if owner is not None:  # causal CLIP tower: all 77 positions, pooled at the end token
        x = embeds + owner.positional_embedding
        x = owner.ln_final(owner.transformer(x, attn_mask=owner.attn_mask))
        x = x[torch.arange(x.shape[0]), tower.pooled_index(tokens)]
        return x @ owner.text_projection if not isinstance(owner.text_projection, torch.nn.Linear) else \
            owner.text_projection(x)
    encoder = tower.encoder  # Hugging Face tower: all positions, padding masked
    mask = (tokens != tower.pad_id).long()
    out = encoder.transformer(inputs_embeds=embeds, attention_mask=mask)
    return encoder.proj(encoder.pooler(out, mask))


def reference_coop(backbone, task: Task, train_set: ImageDataset, cfg: TrainConfig, n_ctx: int) -> torch.Tensor:
    """Train CoOp the reference way; return the final (C, D) normalised text features."""
    encoder = PromptedTextEncoder(backbone, task.classnames, n_ctx=n_ctx,
                                  generator=torch.Generator().manual_seed(task.seed)).to(backbone.device)
    order = torch.Generator().manual_seed(task.seed)

    def text() -> torch.Tensor:
        return F.normalize(full_text_tower(backbone, encoder.embed()[0], encoder.tokens).float(), dim=-1)

    def batches(epoch: int):
        perm = torch.randperm(len(train_set), generator=order)
        for start in range(0, len(perm), cfg.batch_size):
            yield perm[start:start + cfg.batch_size].tolist()

    def loss_fn(idx: list[int]) -> torch.Tensor:
        images = torch.stack([backbone.train_transform(train_set.image(i)) for i in idx])  # decode + augment
        with torch.no_grad():
            feats = F.normalize(backbone.model.encode_image(images.to(backbone.device)).float(), dim=-1)
        labels = torch.as_tensor([train_set.items[i][1] for i in idx], device=backbone.device)
        return F.cross_entropy(backbone.logit_scale * feats @ text().T, labels)

    train([encoder.ctx], loss_fn, batches, cfg, autocast=backbone.autocast, description="reference")
    with torch.no_grad():
        return text()


def clocks() -> tuple[float, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip name (random weights) or vlkit-mini")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--jpeg-size", type=int, default=256)
    parser.add_argument("--test-size", type=int, default=500, help="test images scored (first N)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = vlkit.load_backbone(args.model, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        pool = load_offline("fashion-mnist-mini", "train")
        test = load_offline("fashion-mnist-mini", "test")
        test = test.subset(range(0, len(test), max(1, len(test) // args.test_size))[: args.test_size], "bench")
        split = few_shot(pool, args.shots, args.seed)
        train_set = as_jpegs(split.train, Path(tmp) / "train", args.jpeg_size)
        test_set = as_jpegs(test, Path(tmp) / "test", args.jpeg_size)
        store = FeatureStore(Path(tmp) / "store")
        t0, c0 = clocks()
        feats = store.view_features(backbone, train_set, args.views)  # (N, 1 + V, D), one-off
        t1, c1 = clocks()
        weights = F.normalize(backbone.encode_texts([f"a photo of a {c}." for c in pool.classnames]).float(), dim=-1)
        task = Task(classnames=list(pool.classnames), text_weights=weights.cpu(), train_features=feats,
                    train_labels=torch.tensor(train_set.labels), backbone=backbone, seed=args.seed)
        ours = create_method("coop", n_ctx=args.n_ctx, epochs=args.epochs, select_on_val=False)
        t2, c2 = clocks()
        ours.fit(task)
        t3, c3 = clocks()
        cfg = ours.config.train_config(args.shots)
        ref_text = reference_coop(backbone, task, train_set, cfg, args.n_ctx)
        t4, c4 = clocks()
        test_labels = torch.tensor(test_set.labels)
        ours_acc = accuracy(method_logits(ours, backbone, test_set, store), test_labels)["top1"]
        test_feats = store.image_features(backbone, test_set).to(backbone.device)
        ref_acc = accuracy((test_feats @ ref_text.T).cpu(), test_labels)["top1"]
    ref_wall, ref_cpu = (t4 - t3) / args.epochs, (c4 - c3) / args.epochs
    ours_wall, ours_cpu = (t3 - t2) / args.epochs, (c3 - c2) / args.epochs
    schedule = ours.config.default_epochs(args.shots)  # the paper's full schedule
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else None
    result = {
        "benchmark": "coop_speed" + (f"-{args.tag}" if args.tag else ""),
        "title": f"CoOp epoch time, reference design vs vlkit ({args.model}, {len(pool.classnames)} classes, "
                 f"{args.shots} shots, batch {cfg.batch_size})",
        "command": shlex.join(["python", *sys.argv]),
        "machine": gpu or f"{platform.machine()}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
                          f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, load average {os.getloadavg()[0]:.1f}",
        "claim": "target: reference over vlkit >= 10x per epoch on CPU (ViT-B-32, 10 classes); same accuracy",
        "ratios": {"reference_over_vlkit_epoch_wall": ref_wall / ours_wall,
                   "reference_over_vlkit_epoch_cpu": ref_cpu / ours_cpu,
                   f"reference_over_vlkit_{schedule}_epochs_with_cache":
                       (schedule * ref_wall) / ((t1 - t0) + schedule * ours_wall)},
        "reference_epoch_s": ref_wall, "vlkit_epoch_s": ours_wall,
        "reference_epoch_cpu_s": ref_cpu, "vlkit_epoch_cpu_s": ours_cpu,
        "cache_views_s": t1 - t0, "epochs_timed": args.epochs,
        "reference_top1": ref_acc, "vlkit_top1": ours_acc, "test_images": len(test_set),
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{result['benchmark']}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
