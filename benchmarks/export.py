"""Exported model vs the Python path: artifact size, CPU latency per image (batch 1 and 32), peak memory.

For each model (vlkit-mini; open_clip's ViT-B-32 configuration with random weights, no
download) a Tip-Adapter is fitted on 4 shots per class of fashion-mnist-mini, then exported
as ONNX, ONNX int8 (the ladder's first rung: every projection of the image tower), TorchScript,
TorchScript int8 and ONNX with float16 weights (the ONNX ladder's rung before float32) (``vlkit.apps.export.export_method``,
checked on 100 test images: largest logit difference and top-1 agreement with the Python
path). Each deployment is then measured in a fresh process on 1 thread: the Python path
(load the backbone and the saved method, encode, ``method.logits``), the ONNX files through
onnxruntime alone (no torch imported), the TorchScript files through ``torch.jit.load``.
Latency is the best of repeated runs (the least disturbed by other work on a shared machine) on
random preprocessed images; peak memory is the process's peak resident set (VmHWM) after
loading and running batch 32.
"Python artifact" is what the Python path must load: the whole CLIP (both towers, float32)
plus the saved method; the exported files hold the image tower and the folded head only.

    python benchmarks/export.py                   # both models, about 4 minutes on 1 thread
    python benchmarks/export.py --models vlkit-mini --out /tmp/export.json
    python benchmarks/export.py --int8-matrix     # every method: parity and int8 agreement (export_int8.json)
    python benchmarks/export.py --int8-sweep      # which nodes int8 keeps float: chosen on train images
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "export.json"
VARIANTS = [("onnx", False), ("onnx", True), ("torchscript", False), ("torchscript", True)]

# Measured in a fresh process: argv = kind, path (model file or run folder), model name, repeats.
CHILD = r'''
import json, resource, sys, time
kind, path, model, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import numpy as np
size = json.loads(sys.argv[5])
rng = np.random.default_rng(0)
batches = {1: rng.standard_normal((1, 3, *size)).astype(np.float32), 32: rng.standard_normal((32, 3, *size)).astype(np.float32)}
t0 = time.perf_counter()
if kind == "onnx":
    import onnxruntime as ort
    options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    run = lambda x: session.run(None, {"image": x})[0]
else:
    import torch
    torch.set_num_threads(1)
    if kind == "torchscript":
        import warnings; warnings.simplefilter("ignore")
        module = torch.jit.load(path, map_location="cpu")
        def run(x):
            with torch.no_grad():
                return module(torch.from_numpy(x))[0]
    else:
        import vlkit
        from vlkit.methods import Method
        torch.manual_seed(0)  # random-weight models (ViT-B-32 here) are drawn as in the parent
        backbone = vlkit.load_backbone(model, device="cpu")
        method = Method.load(path, backbone)
        def run(x):
            with torch.no_grad():
                return method.logits(backbone.encode_images(torch.from_numpy(x)))
load_s = time.perf_counter() - t0
out = {"load_seconds": load_s}
for batch, x in batches.items():
    for _ in range(3):
        run(x)  # warm-up (TorchScript's profiling executor optimises after its first runs of a shape)
    times = []
    for _ in range(repeats if batch == 1 else max(3, repeats // 4)):
        t = time.perf_counter(); run(x); times.append(time.perf_counter() - t)
    out[f"ms_per_image_b{batch}"] = 1000 * min(times) / batch
# VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork + exec)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
out["peak_rss_mb"] = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
'''


def measure(kind: str, path: Path, model: str, size: list[int], repeats: int) -> dict:
    """Latency and peak memory of one deployment, in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "VLKIT_QUIET": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, kind, str(path), model, str(repeats), json.dumps(size)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_model(model: str, work: Path, repeats: int) -> dict:
    """Fit, export every variant, check each, and measure every deployment of ``model``."""
    import torch
    import vlkit
    from vlkit.apps.export import export_method
    from vlkit.apps.export.run import check_set
    from vlkit.features.store import FeatureStore
    from vlkit.methods import create_method
    from vlkit.protocols.fewshot import build_task

    torch.manual_seed(0)  # random-weight models are drawn the same in every process
    backbone = vlkit.load_backbone(model, device="cpu")
    pool = vlkit.load_data("fashion-mnist-mini", "train")
    task = build_task(backbone, pool, shots=4, seed=1, store=FeatureStore(work / "store", num_workers=0), views=0)
    method = create_method("tip-adapter").fit(task)
    method_dir = method.save(work / model / "method", backbone_fingerprint=backbone.fingerprint)
    images, labels = check_set(backbone, "fashion-mnist-mini", pool.classnames, 100)
    size = list(backbone.preprocess_cfg.size)
    clip_bytes = sum(t.numel() * t.element_size() for t in backbone.model.state_dict().values())
    method_bytes = sum(f.stat().st_size for f in method_dir.iterdir())
    rows = {"python": {"bytes": clip_bytes + method_bytes, "clip_bytes": clip_bytes, "method_bytes": method_bytes,
                       **measure("python", method_dir, model, size, repeats)}}
    from vlkit.apps.export.int8 import Int8Rule

    for format, int8 in VARIANTS + [("onnx", "float16")]:
        label = format + ("_int8" if int8 is True else "_float16" if int8 else "")
        out = work / model / f"model-{label}{'.onnx' if format == 'onnx' else '.pt'}"
        start = time.perf_counter()
        report = export_method(method, backbone, out, format=format, int8=bool(int8), check_images=images,
                               check_labels=labels, int8_rule=Int8Rule(mode="float16") if int8 == "float16" else None)
        rows[label] = {"bytes": report["bytes"], "export_seconds": time.perf_counter() - start,
                       "check": report["check"], **measure("onnx" if format == "onnx" else "torchscript", out,
                                                             model, size, repeats)}
    del torch
    return {"image_size": size, "embed_dim": backbone.embed_dim, "paths": rows}


HEADLINE = {"onnx": ("b1_latency",), "onnx_int8": ("bytes", "b1_latency", "b32_latency", "peak_memory"),
            "onnx_float16": ("bytes", "b1_latency")}


def ratios_of(models: dict) -> dict:
    """Headline ratios, exported over Python per model (every variant and measure is in ``deployments``)."""
    found = {}
    for model, result in models.items():
        base, key = result["paths"]["python"], model.lower().replace("-", "_")
        for label, measures in HEADLINE.items():
            row = result["paths"][label]
            values = {"bytes": row["bytes"] / base["bytes"],
                      "b1_latency": row["ms_per_image_b1"] / base["ms_per_image_b1"],
                      "b32_latency": row["ms_per_image_b32"] / base["ms_per_image_b32"],
                      "peak_memory": row["peak_rss_mb"] / base["peak_rss_mb"]}
            found.update({f"{key}_{label}_{m}_over_python": values[m] for m in measures})
    return found


def deployment_rows(models: dict) -> list[dict]:
    """One row per measured deployment (RESULTS.md renders it as a table)."""
    rows = []
    for model, result in models.items():
        for label, row in result["paths"].items():
            check = row.get("check", {})
            rows.append({"model": model, "path": label, "artifact_mb": round(row["bytes"] / 1e6, 2),
                         "ms_per_image_b1": round(row["ms_per_image_b1"], 3),
                         "ms_per_image_b32": round(row["ms_per_image_b32"], 3),
                         "peak_rss_mb": round(row["peak_rss_mb"]), "load_seconds": round(row["load_seconds"], 2),
                         "top1_agreement_pct": check.get("top1_agreement", 100.0),
                         "max_abs_logit_diff": float(f"{check.get('max_abs_logit_diff', 0.0):.3g}")})
    return rows


def markdown(rows: list[dict]) -> str:
    """``rows`` as a Markdown table (printed at the end of a run)."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows])


def int8_matrix(model: str, work: Path) -> list[dict]:
    """Every exportable few-shot method (its quick schedule), 4 shots of fashion-mnist-mini: float32 ONNX
    parity and int8 (ONNX, TorchScript) top-1 agreement with the Python path on the whole test split."""
    import torch
    import vlkit
    from vlkit.apps.export import export_method
    from vlkit.apps.export.heads import NOT_FOLDABLE
    from vlkit.apps.export.run import check_set
    from vlkit.features.store import FeatureStore
    from vlkit.methods import create_method, list_methods, method_class
    from vlkit.protocols.fewshot import build_task

    backbone = vlkit.load_backbone(model, device="cpu")
    pool = vlkit.load_data("fashion-mnist-mini", "train")
    task = build_task(backbone, pool, shots=4, seed=1, store=FeatureStore(work / "store", num_workers=0), views=2,
                      with_images=True)
    images, labels = check_set(backbone, "fashion-mnist-mini", pool.classnames, None)
    select = check_set(backbone, "fashion-mnist-mini", pool.classnames, 500, split="train")[0]  # chooses the rung
    rows = []
    for name in list_methods():
        klass = method_class(name)
        if name in NOT_FOLDABLE or klass.task_kind != "fewshot":
            continue
        torch.manual_seed(1)
        method = create_method(name, **klass.Config.quick).fit(task)
        row = {"method": name}
        for format, int8 in (("onnx", False), ("onnx", True), ("torchscript", True)):
            label = format + ("_int8" if int8 else "")
            out = work / f"{name}-{label}{'.onnx' if format == 'onnx' else '.pt'}"
            report = export_method(method, backbone, out, format=format, int8=int8, check_images=images,
                                   check_labels=labels, select_images=select if int8 else None)
            check = report["check"]
            if not int8:
                row["fp32_max_abs_logit_diff"] = float(f"{check['max_abs_logit_diff']:.3g}")
                row["fp32_tolerance"] = float(f"{1e-4 * max(1.0, check['max_abs_logit']):.3g}")
                row["fp32_within_tolerance"] = check["max_abs_logit_diff"] <= 1e-4 * max(1.0, check["max_abs_logit"])
                row["accuracy"] = round(check["accuracy_python"], 1)
                row["onnx_mb"] = round(report["bytes"] / 1e6, 2)
            else:
                row[f"{label}_agreement_pct"] = round(check["top1_agreement"], 1)
                row[f"{label}_accuracy_change"] = round(check["accuracy_change"], 1)
            if int8:
                picked = report["int8_rule"]
                row[f"{label}_rule"] = picked["rule"]
                row[f"{label}_train_agreement_pct"] = picked["selected_on"]["tried"][-1]["agreement_pct"]
                row[f"{label}_train_predicted_pct"] = picked["selected_on"]["tried"][-1]["predicted_agreement_pct"]
                row[f"{label}_mb"] = round(report["bytes"] / 1e6, 2)
        print(f"{row}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main_int8_matrix(args: argparse.Namespace) -> None:
    """``--int8-matrix``: the per-method parity and int8 agreement table (its own result file)."""
    with tempfile.TemporaryDirectory(prefix="vlkit-export-") as tmp:
        rows = int8_matrix("vlkit-mini", Path(tmp))
    record = int8_matrix_record(rows)
    out = args.out if args.out != DEFAULT_OUT else ROOT / "results" / "export_int8.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(markdown(rows))


def int8_matrix_record(rows: list[dict]) -> dict:
    """The result file of ``--int8-matrix`` for its per-method ``rows``."""
    import onnxruntime
    import torch

    agreements = [r["onnx_int8_agreement_pct"] for r in rows]
    script = [r["torchscript_int8_agreement_pct"] for r in rows]
    from vlkit.apps.export.int8 import LADDER, SELECT_AGREEMENT, SELECT_PREDICTED, TORCHSCRIPT_LADDER

    rungs = {rule.label(): sum(r["onnx_int8_rule"] == rule.label() for r in rows) for rule in LADDER}
    script_rungs = {rule.label(): sum(r["torchscript_int8_rule"] == rule.label() for r in rows)
                    for rule in TORCHSCRIPT_LADDER}
    record = {
        "benchmark": "export_int8",
        "title": "vlkit export on vlkit-mini: float32 parity and int8 top-1 agreement with the Python path, "
                 "every exportable few-shot method",
        "command": "python benchmarks/export.py --int8-matrix",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread; "
                   f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "claim": "issue 20: float32 logits within 1e-4 x max(1, largest |logit|) of the Python path (the tolerance "
                 "scales with the logits: TIP-X's and GDA's reach hundreds to thousands); --int8 top-1 agreement >= "
                 "99 % (the fraction of methods that reach it is the headline). --int8 writes, per method and "
                 "format, the first ladder rung that on 500 train images (never the test images below) agrees with "
                 f"float32 on {SELECT_AGREEMENT} % and is predicted from the margins to agree on {SELECT_PREDICTED} %",
        "ratios": {"methods_int8_onnx_at_99_over_all": sum(a >= 99.0 for a in agreements) / len(agreements),
                   "methods_int8_torchscript_at_99_over_all": sum(a >= 99.0 for a in script) / len(script),
                   "methods_fp32_within_tolerance_over_all": sum(r["fp32_within_tolerance"] for r in rows) / len(rows),
                   "mean_onnx_int8_bytes_over_fp32": sum(r["onnx_int8_mb"] / r["onnx_mb"] for r in rows) / len(rows)},
        "min_torchscript_int8_agreement_pct": min(script),
        "min_onnx_int8_agreement_pct": min(agreements),
        "parity_tolerance": "1e-4 x max(1, largest |logit| of the Python path on the check images)",
        "ladder": [rule.label() for rule in LADDER],
        "methods_per_rung": rungs,
        "torchscript_ladder": [rule.label() for rule in TORCHSCRIPT_LADDER],
        "torchscript_methods_per_rung": script_rungs,
        "sweep": "benchmarks/results/export_int8_sweep.json (python benchmarks/export.py --int8-sweep)",
        "test_images": 500,
        "methods": rows,
        "notes": "4 shots, seed 1, each method's quick schedule (as `vlkit fewshot`), 2 cached augmented views; "
                 "the whole fashion-mnist-mini test split (500 images), checked in batches of 256 (int8 "
                 "activations are quantised per batch); the rung is chosen on 500 train images, by the count of "
                 "agreeing images and by the agreement predicted from margins (every image's float32 margin "
                 "against every image's int8 logit change: a flip count alone passed IA3's full int8 at 100 % on "
                 "train and saw 98.6 % on test). Disagreements are near-ties: vlkit-mini's zero-shot margins are "
                 "small (8 % of train images within 0.1 logit of a tie), so on vlkit-mini no int8 rule, not even "
                 "int8 weights with float activations, keeps 99 % for VPT, MaPLe, DeFo and zero-shot (the sweep); "
                 "those get float16 weights in ONNX (half the file, float32 speed) and stay float32 in "
                 "TorchScript. TIP-X and GDA exceed 1e-4 in absolute terms (their logits reach hundreds: the "
                 "rescaled KL term, the linear term) and are within the scaled tolerance; on test-tiny their own "
                 "Python path moves more than that under 1e-7 noise in the features. vlkit-mini v1 weights: "
                 "re-run when v2 ships.",
    }
    return record


SWEEP_METHODS = ["zero-shot", "linear-probe", "defo", "maple", "clip-adapter", "vpt-shallow", "vpt-deep", "ia3"]
SWEEP_GROUPS = ["proj", "qkv", "out_proj", "c_fc", "c_proj"] + [f"block:{i}" for i in range(6)]


def sweep_rules(ranked: list[str]) -> list:
    """The candidate rules: today's, fixed structural ones, and the most sensitive groups kept float in turn."""
    from vlkit.apps.export.int8 import Int8Rule

    fixed = [("head",), ("head", "proj"), ("head", "last:1"), ("head", "first:1"), ("head", "proj", "last:1"),
             ("head", "out_proj"), ("head", "c_proj"), ("head", "c_fc"), ("head", "qkv")]
    greedy = [("head",) + tuple(ranked[:k]) for k in (1, 2, 3)]
    rules = [Int8Rule(keep_float=k) for k in dict.fromkeys(fixed + greedy)]
    return rules + [Int8Rule(reduce_range=True), Int8Rule(per_channel=False), Int8Rule(mode="float16"),
                    Int8Rule(keep_float=("head",), extra={"simulated": "weights"})]


def simulate_weight_only(fp32: Path, path: Path) -> None:
    """int8 weights (symmetric, per output channel) with float32 activations, simulated: the weights are
    rounded to int8 levels and stored as float32. Not a deployable file; the accuracy of weight-only int8."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from vlkit.apps.export.int8 import weight_nodes

    model = onnx.load(str(fp32))
    inits = {init.name: init for init in model.graph.initializer}
    names = set(weight_nodes(model.graph))
    for node in model.graph.node:
        if node.name not in names or node.name.startswith("/head/") or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        w = weight.T if trans_b else weight  # (in, out)
        scale = np.abs(w).max(axis=0, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        rounded = np.clip(np.round(w / scale), -127, 127) * scale
        inits[node.input[1]].CopyFrom(numpy_helper.from_array((rounded.T if trans_b else rounded)
                                                              .astype(np.float32), node.input[1]))
    onnx.save(model, str(path))


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session: Any, images: Any, batch: int = 256) -> Any:
    import numpy as np

    return np.concatenate([session.run(None, {"image": images[i:i + batch]})[0] for i in range(0, len(images), batch)])


def _latency_ms(path: Path, size: list[int], repeats: int = 30) -> dict:
    """Best-of-``repeats`` ms per image at batch 1 and 32 (in this process, 1 thread)."""
    import numpy as np

    session, rng, found = _session(path), np.random.default_rng(0), {}
    for batch in (1, 32):
        x = rng.standard_normal((batch, 3, *size)).astype(np.float32)
        for _ in range(3):
            session.run(None, {"image": x})
        times = []
        for _ in range(repeats if batch == 1 else max(3, repeats // 4)):
            t = time.perf_counter()
            session.run(None, {"image": x})
            times.append(time.perf_counter() - t)
        found[f"ms_per_image_b{batch}"] = round(1000 * min(times) / batch, 4)
    return found


def int8_sweep(model: str, work: Path, images_per_split: int) -> dict:
    """Fit ``SWEEP_METHODS``, export each in float32 once, then measure every candidate int8 rule.

    Selection data: ``images_per_split`` images of the *train* split (the rule is chosen on these);
    the test split's agreement is recorded beside it for the report, never used to choose.
    Per-group sensitivity: only that group int8 (everything else float), RMS logit change on train.
    """
    import numpy as np
    import onnx
    import torch
    import vlkit
    from vlkit.apps.export import export_method
    from vlkit.apps.export.int8 import excluded_nodes, exclusion_names, group_members, quantize_onnx, weight_nodes
    from vlkit.apps.export.run import check_set
    from vlkit.features.store import FeatureStore
    from vlkit.methods import create_method, method_class
    from vlkit.protocols.fewshot import build_task

    backbone = vlkit.load_backbone(model, device="cpu")
    pool = vlkit.load_data("fashion-mnist-mini", "train")
    task = build_task(backbone, pool, shots=4, seed=1, store=FeatureStore(work / "store", num_workers=0), views=2,
                      with_images=True)
    picks = torch.linspace(0, len(pool) - 1, images_per_split).round().long().tolist()
    train = torch.stack([backbone.preprocess(pool.image(i).convert("RGB")) for i in picks]).numpy()
    test = check_set(backbone, "fashion-mnist-mini", pool.classnames, None)[0].numpy()
    size = list(backbone.preprocess_cfg.size)
    fp32: dict[str, tuple[Path, Any, Any]] = {}
    for name in SWEEP_METHODS:
        torch.manual_seed(1)
        method = create_method(name, **method_class(name).Config.quick).fit(task)
        path = work / f"{name}.onnx"
        export_method(method, backbone, path, format="onnx")
        session = _session(path)
        fp32[name] = (path, _run(session, train), _run(session, test))
        print(f"fitted and exported {name}", file=sys.stderr, flush=True)

    def measure(name: str, rule: Any, nodes: list[str] | None = None) -> dict:
        path, ref_train, ref_test = fp32[name]
        out = work / f"{name}-int8.onnx"
        if nodes is None and rule.extra.get("simulated"):
            simulate_weight_only(path, out)
        elif nodes is None:
            quantize_onnx(path, out, rule)
        else:  # only ``nodes`` int8: everything else stays float
            graph = onnx.load(str(path), load_external_data=False).graph
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"],
                             nodes_to_exclude=exclusion_names(graph, [n for n in weight_nodes(graph)
                                                                      if n not in nodes]))
        session = _session(out)
        got_train, got_test = _run(session, train), _run(session, test)
        agree = lambda a, b: round(100.0 * float((a.argmax(-1) == b.argmax(-1)).mean()), 1)  # noqa: E731
        rms = float(np.sqrt(((got_train - ref_train) ** 2).mean()) / (ref_train.std() + 1e-12))
        return {"train_agreement_pct": agree(got_train, ref_train), "test_agreement_pct": agree(got_test, ref_test),
                "train_rms_logit_change_over_std": float(f"{rms:.3g}"), "bytes": out.stat().st_size, "path": out}

    # 1. sensitivity of each group (only it int8), on the frozen tower (zero-shot) and a tuned one (vpt-deep)
    sensitivity = []
    for group in SWEEP_GROUPS:
        row = {"group": group}
        for name in ("zero-shot", "vpt-deep"):
            graph = onnx.load(str(fp32[name][0]), load_external_data=False).graph
            nodes = group_members(group, weight_nodes(graph))
            found = measure(name, None, nodes)
            row[f"{name}_nodes"] = len(nodes)
            row[f"{name}_train_rms_logit_change_over_std"] = found["train_rms_logit_change_over_std"]
            row[f"{name}_train_agreement_pct"] = found["train_agreement_pct"]
        sensitivity.append(row)
        print(f"sensitivity {row}", file=sys.stderr, flush=True)
    def score(row: dict) -> float:
        return row["zero-shot_train_rms_logit_change_over_std"] + row["vpt-deep_train_rms_logit_change_over_std"]

    ranked = [r["group"] for r in sorted(sensitivity, key=score, reverse=True)]
    # 2. every candidate rule on every sweep method: agreement (train: selection; test: reported), size, latency
    rules = []
    for rule in sweep_rules(ranked):
        label = "int8 weights, float32 activations (simulated)" if rule.extra.get("simulated") else rule.label()
        row = {"rule": label, "keep_float": list(rule.keep_float), "per_channel": rule.per_channel,
               "reduce_range": rule.reduce_range, "mode": rule.mode, "methods": {}}
        for name in SWEEP_METHODS:
            found = measure(name, rule)
            path = found.pop("path")
            if name == "zero-shot":
                graph = onnx.load(str(fp32[name][0]), load_external_data=False).graph
                row["float_nodes"] = len(weight_nodes(graph)) if rule.mode == "float16" else \
                    len(excluded_nodes(graph, rule))
                row["zero_shot_bytes"] = found["bytes"]
                row.update(_latency_ms(path, size))
            found.pop("bytes")
            row["methods"][name] = found
        row["min_train_agreement_pct"] = min(m["train_agreement_pct"] for m in row["methods"].values())
        row["min_test_agreement_pct"] = min(m["test_agreement_pct"] for m in row["methods"].values())
        rules.append(row)
        print(f"rule {row['rule']}: min train {row['min_train_agreement_pct']}, "
              f"{ {m: v['train_agreement_pct'] for m, v in row['methods'].items()} }", file=sys.stderr, flush=True)
    reference = {"zero_shot_fp32_bytes": fp32["zero-shot"][0].stat().st_size,
                 **{f"fp32_{k}": v for k, v in _latency_ms(fp32["zero-shot"][0], size).items()}}
    return {"sensitivity": sensitivity, "ranked_groups": ranked, "rules": rules, "fp32": reference,
            "train_images": len(train), "test_images": len(test)}


def choose_rule(rules: list[dict], margin: float) -> dict:
    """The deployable int8 rule with the fewest float nodes (then the smallest file) whose train agreement is
    >= 99 % + margin for every sweep method (else the one with the best worst method); train images only."""
    rules = [r for r in rules if r["mode"] == "dynamic" and "simulated" not in r["rule"]]
    good = [r for r in rules if r["min_train_agreement_pct"] >= 99.0 + margin]
    if not good:
        return max(rules, key=lambda r: r["min_train_agreement_pct"])
    return min(good, key=lambda r: (r["float_nodes"], r["zero_shot_bytes"], not r["per_channel"]))


def main_int8_sweep(args: argparse.Namespace) -> None:
    """``--int8-sweep``: the per-group sensitivity and the candidate rules (results/export_int8_sweep.json)."""
    import onnxruntime
    import torch

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlkit-export-") as tmp:
        found = int8_sweep("vlkit-mini", Path(tmp), args.sweep_images)
    chosen = choose_rule(found["rules"], args.margin)
    from vlkit.apps.export.int8 import LADDER, SELECT_AGREEMENT
    record = {
        "benchmark": "export_int8_sweep",
        "title": "vlkit export --int8 on vlkit-mini: which MatMul/Gemm nodes stay float32, chosen on train images",
        "command": "python benchmarks/export.py --int8-sweep" + (
            f" --sweep-images {args.sweep_images}" if args.sweep_images != 500 else "") + (
            f" --margin {args.margin}" if args.margin != 0.4 else ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread; "
                   f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "claim": "issue 20: int8 top-1 agreement >= 99 % for every method. best_single_rule: the deployable int8 rule "
                 "keeping the fewest nodes float whose train agreement is >= 99 % + margin for every sweep method "
                 "(or, when none is, the one with the best worst method); the export then uses ladder, chosen per "
                 "export on train images",
        "best_single_rule_reaches_target": chosen["min_train_agreement_pct"] >= 99.0 + args.margin,
        "ladder": [rule.label() for rule in LADDER],
        "ladder_min_train_agreement_pct": SELECT_AGREEMENT,
        "ratios": {"best_single_rule_bytes_over_fp32": chosen["zero_shot_bytes"]
                   / found["fp32"]["zero_shot_fp32_bytes"],
                   "float16_bytes_over_fp32": next(r["zero_shot_bytes"] for r in found["rules"] if r["mode"] ==
                                                   "float16") / found["fp32"]["zero_shot_fp32_bytes"]},
        "best_single_rule": chosen["rule"],
        "selection": f"train split of fashion-mnist-mini ({found['train_images']} images, evenly spaced); the test "
                     f"split ({found['test_images']} images) is recorded beside it and never used to choose",
        "seconds": round(time.perf_counter() - start),
        "table": [{"rule": r["rule"], "float_nodes": r["float_nodes"],
                   "zero_shot_mb": round(r["zero_shot_bytes"] / 1e6, 2),
                   "ms_b1": r["ms_per_image_b1"], "ms_b32": r["ms_per_image_b32"],
                   "min_train_agreement_pct": r["min_train_agreement_pct"],
                   "min_test_agreement_pct": r["min_test_agreement_pct"],
                   **{f"train_{m}": v["train_agreement_pct"] for m, v in r["methods"].items()}}
                  for r in found["rules"]],
        **found,
        "notes": "4 shots, seed 1, each method's quick schedule, 2 cached augmented views (as --int8-matrix). "
                 "Agreement is against the float32 ONNX export (itself within 1e-4 of the Python path), batches of "
                 "256 (dynamic int8 quantises activations per batch). Sensitivity: only that group int8, the RMS "
                 "logit change over the float32 logits' std on train images. ms_b1/ms_b32: best of repeated runs in "
                 "this process on a shared machine (rough; export.json measures latency in fresh processes). The "
                 "simulated row rounds the weights to int8 levels and keeps float32 activations: the accuracy "
                 "weight-only int8 would have (not a deployable file). vlkit-mini v1 weights: re-run when v2 ships.",
    }
    out = args.out if args.out != DEFAULT_OUT else ROOT / "results" / "export_int8_sweep.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(markdown(record["table"]))
    print("best single rule:", chosen["rule"], chosen["min_train_agreement_pct"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vlkit-mini,ViT-B-32")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs at batch 1 (batch 32: a quarter)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--int8-matrix", action="store_true", help="instead: every method's float32 parity and "
                        "int8 agreement on vlkit-mini (results/export_int8.json)")
    parser.add_argument("--int8-sweep", action="store_true", help="instead: which int8 rule (nodes kept float) "
                        "keeps >= 99 %% agreement, chosen on train images (results/export_int8_sweep.json)")
    parser.add_argument("--sweep-images", type=int, default=500, help="train images the sweep chooses on")
    parser.add_argument("--margin", type=float, default=0.4, help="the sweep's chosen rule reaches 99 %% + this "
                        "on train images for every sweep method")
    args = parser.parse_args()
    import torch

    if args.int8_sweep:
        torch.set_num_threads(1)
        os.environ.setdefault("VLKIT_CACHE", tempfile.mkdtemp(prefix="vlkit-export-bench-"))
        return main_int8_sweep(args)

    if args.int8_matrix:
        torch.set_num_threads(1)
        os.environ.setdefault("VLKIT_CACHE", tempfile.mkdtemp(prefix="vlkit-export-bench-"))
        return main_int8_matrix(args)

    torch.set_num_threads(1)
    os.environ.setdefault("VLKIT_CACHE", tempfile.mkdtemp(prefix="vlkit-export-bench-"))
    models, load_before = {}, os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vlkit-export-") as tmp:
        for model in args.models.split(","):
            models[model] = bench_model(model, Path(tmp), args.repeats)
    import onnxruntime

    record = {
        "benchmark": "export",
        "title": "vlkit export: artifact size, CPU latency per image and peak memory, exported vs the Python path",
        "command": "python benchmarks/export.py" + (f" --models {args.models}" if args.models != "vlkit-mini,ViT-B-32"
                                                    else "") + (f" --repeats {args.repeats}" if args.repeats != 20
                                                                else ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread per process; "
                   f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "claim": "issue 20's export must-show: the exported model (ONNX, ONNX int8, TorchScript) against the Python "
                 "path on vlkit-mini and open_clip's ViT-B-32 configuration (random weights); ratios < 1 favour "
                 "the export",
        "method": "tip-adapter, 4 shots of fashion-mnist-mini, seed 1; checks on 100 test images",
        "notes": "ViT-B-32 has random weights (no download): its agreement numbers compare near-tied logits and "
                 "say little; its sizes and times are the real architecture's. Peak memory is the whole process "
                 "(the Python path imports torch and open_clip and holds both towers; ONNX runs without torch).",
        "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "ratios": ratios_of(models),
        "deployments": deployment_rows(models),
        "_models": models,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(markdown(record["deployments"]))


if __name__ == "__main__":
    main()
