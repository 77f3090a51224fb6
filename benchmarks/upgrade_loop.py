"""The zero-to-few-shot upgrade loop through the CLI: accuracy after 0, 1, 2, 4, 8, 16 images per class.

Writes the dataset's class names to ``classes.txt`` and sampled training and test images
to PNG files, then drives the CLI (``vlkit upgrade init``, ``vlkit upgrade add`` once per
class and step, ``vlkit predict --json``) in this process with Typer's runner: the same
code path as the shell, without paying Python's start-up for each of the ~50 calls.
Reports test accuracy after each step, ``predict``'s time per image once the model is
loaded (encode + cache logits, batch and single image), and the wall time of one whole
``predict`` call for one image (model load included). Writes
benchmarks/results/upgrade_loop-<model>-<data>.json.

    python benchmarks/upgrade_loop.py --model vlkit-mini --data fashion-mnist
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import typer
from typer.testing import CliRunner

from cache_search import provenance  # the one copy of the result-file keys (run as a script)
from vlkit.apps import upgrade
from vlkit.cli.main import app as vlkit_app
from vlkit.data.offline import load_offline

RESULTS = Path(__file__).resolve().parent / "results"


def invoke(runner: CliRunner, app: typer.Typer, argv: list[str]) -> str:
    """Run one CLI command; raise with its output when it fails."""
    result = runner.invoke(app, argv, catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(f"vlkit {' '.join(argv[:3])} failed ({result.exit_code}): {result.output}")
    return result.output


def save_images(dataset, indices: list[int], folder: Path) -> list[Path]:
    """Write items as PNG files named by index."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in indices:
        path = folder / f"{i}.png"
        dataset.image(i).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vlkit-mini")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--steps", default="1,2,4,8,16", help="cumulative labelled images per class")
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--eval-split", default="test", help="split scored after each step (val: for design choices)")
    parser.add_argument("--init-args", default="", help="extra `upgrade init` options, e.g. '--retune-min 2'")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    rng = random.Random(args.seed)
    train, test = load_offline(args.data, "train"), load_offline(args.data, args.eval_split)
    by_class = {c: [i for i, y in enumerate(train.labels) if y == c] for c in range(len(train.classnames))}
    picks = {c: rng.sample(items, max(steps)) for c, items in by_class.items()}
    test_ids = rng.sample(range(len(test)), min(args.test_size, len(test)))
    runner, app = CliRunner(), vlkit_app
    rows = []
    with tempfile.TemporaryDirectory(prefix="vlkit-upgrade-") as tmp:
        tmp = Path(tmp)
        classes = tmp / "classes.txt"
        classes.write_text("\n".join(train.classnames) + "\n")
        test_paths = save_images(test, test_ids, tmp / "test")
        test_labels = [test.labels[i] for i in test_ids]
        run = tmp / "run"
        invoke(runner, app, ["upgrade", "init", str(run), "--model", args.model, "--classes", str(classes),
                             *args.init_args.split()])

        def accuracy(tag: int) -> dict:
            out = tmp / f"pred-{tag}.json"
            start = time.perf_counter()
            invoke(runner, app, ["predict", str(run), *map(str, test_paths), "--top-k", "1", "--json",
                                 "--output", str(out)])
            wall = time.perf_counter() - start
            result = json.loads(out.read_text())
            names = [row["top"][0]["class"] for row in result["predictions"]]
            correct = sum(train.classnames.index(n) == y for n, y in zip(names, test_labels))
            return {"per_class": tag, "examples": result["examples"], "top1": 100.0 * correct / len(test_labels),
                    "alpha": result["alpha"], "beta": result["beta"],
                    "predict_s_per_image": result["seconds_per_image"], "predict_call_s": wall}

        rows.append(accuracy(0))
        print(f"zero-shot: top-1 {rows[-1]['top1']:.2f}%", flush=True)
        done = 0
        for k in steps:
            for c, name in enumerate(train.classnames):
                new = save_images(train, picks[c][done:k], tmp / "train" / str(c))
                invoke(runner, app, ["upgrade", "add", str(run), *map(str, new), "--label", name])
            done = k
            rows.append(accuracy(k))
            print(f"{k:>2} per class: top-1 {rows[-1]['top1']:.2f}% "
                  f"({1000 * rows[-1]['predict_s_per_image']:.2f} ms/image in predict)", flush=True)
        # one image at a time, model loaded once (what a service would see)
        meta = upgrade.read_meta(run)
        backbone = upgrade.load_backbone_for(meta)
        method = upgrade.load_method(run, meta)
        single = [upgrade.predict_images(run, [p], top_k=3, backbone=backbone, method=method)["seconds_per_image"]
                  for p in test_paths[:30]]
        start = time.perf_counter()
        invoke(runner, app, ["predict", str(run), str(test_paths[0]), "--json"])
        one_call = time.perf_counter() - start
    summary = {"benchmark": "upgrade_loop", **provenance(args.threads),
               "title": f"Zero-to-few-shot upgrade through the CLI, {args.model} on {args.data}",
               "claim": "accuracy rises as labelled images arrive (no refitting); predict takes well under a "
                        "second per image once the model is loaded",
               "model": args.model, "data": args.data, "seed": args.seed, "test_images": len(test_ids),
               "steps": rows, "single_image_predict_ms_median": 1000 * statistics.median(single),
               "one_image_predict_call_s": one_call, "alpha": upgrade.DEFAULT_ALPHA, "beta": upgrade.DEFAULT_BETA}
    RESULTS.mkdir(exist_ok=True)
    variant = f"-{args.eval_split}{args.init_args.replace(' ', '')}"
    suffix = "" if args.eval_split == "test" and not args.init_args else variant
    path = RESULTS / f"upgrade_loop-{args.model}-{args.data}{suffix}.json"
    path.write_text(json.dumps(summary, indent=1))
    print(f"single image, model loaded: {summary['single_image_predict_ms_median']:.2f} ms (median of 30); "
          f"one whole `predict` call for one image (model load included): {one_call:.2f} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
