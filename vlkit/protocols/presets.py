"""The main job (``vlkit fewshot``): every few-shot method at 1, 4 and 16 shots, with cost.

A preset of :func:`vlkit.protocols.runner.run_bench`: the same resumable cells
(``cells.jsonl`` in the output folder), the same mean ± std over seeds
(:mod:`vlkit.report.summary`) and the same plot, plus the job's ``results.json`` and its
terminal table. The "quick" schedule (each method config's ``quick``) keeps the default
job to a few minutes on 2 CPU cores (3 min 42 s to 4 min 8 s with 27 methods, measured on an idle machine); every
row records the settings it ran with, and
``--schedule paper`` runs the papers' own. A quick schedule is only shown where it reaches
at least half of its paper schedule's gain over zero-shot (Fashion-MNIST, 16 shots); a
method whose config sets ``quick_not_run`` (the reason) is not run by the quick job and its
row reads "not run (quick)" instead of a number that looks like a verdict.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from vlkit.io import atomic_write_json
from vlkit.methods import list_methods, method_class
from vlkit.protocols.runner import BenchInterrupted, quick_settings, run_bench
from vlkit.report.summary import summarize

log = logging.getLogger("vlkit.fewshot")
DEFAULT_SHOTS = (1, 4, 16)
NOT_RUN = "not run (quick)"

__all__ = ["DEFAULT_SHOTS", "NOT_RUN", "by_method", "fewshot_methods", "job_summary", "not_run_quick",
           "quick_settings", "run_fewshot_job", "schedule_text"]


def fewshot_methods() -> list[str]:
    """Registered methods that fit a plain few-shot task (not domain adaptation), zero-shot first."""
    names = [m for m in list_methods() if method_class(m).task_kind == "fewshot"]
    return sorted(names, key=lambda m: m != "zero-shot")


def not_run_quick(method: str) -> str:
    """Why the quick job does not run ``method`` (its config's ``quick_not_run``), or "" when it does."""
    return str(getattr(method_class(method).Config, "quick_not_run", "") or "")


def schedule_text(method: str, settings: dict[str, Any]) -> str:
    """``"paper"`` for no options, else ``"quick: epochs=5, ..."`` (the row's ``schedule``), in the
    order of the method's quick schedule (a cell stores its options sorted)."""
    order = [*quick_settings(method), *sorted(settings)]
    return "paper" if not settings else "quick: " + ", ".join(f"{k}={settings[k]}" for k in dict.fromkeys(order)
                                                              if k in settings)


def run_fewshot_job(model: str = "vlkit-mini", pretrained: str | None = None, data: str = "fashion-mnist-mini",
                    methods: Sequence[str] | None = None, shots: Sequence[int] = DEFAULT_SHOTS,
                    seeds: Sequence[int] = (1,), out_dir: Path = Path("runs/fewshot"), views: int = 10,
                    device: str | None = None, on_result: Callable[[dict[str, Any]], None] | None = None,
                    schedule: str = "quick", jobs: int = 1, store: Any = None) -> dict[str, Any]:
    """Fit and score each method x shots x seed through the runner; write ``results.json`` and the plots.

    ``store`` (default: a local :class:`~vlkit.features.store.FeatureStore`) encodes the images, e.g. on Ray.

    Cells already in ``out_dir/cells.jsonl`` are reused. A method that fails is recorded
    with its error and the job goes on; the caller decides the exit code from ``failures``.
    On Ctrl-C, ``results.json`` is written with the rows finished so far (``"interrupted":
    true`` and a note) and a KeyboardInterrupt saying how to resume is raised.
    """
    methods = list(methods or fewshot_methods())
    skipped = {m: not_run_quick(m) for m in methods if schedule == "quick" and not_run_quick(m)}
    ran = [m for m in methods if m not in skipped]
    try:
        bench = run_bench(model, pretrained, [data], ran, shots, seeds, out_dir, "fewshot", device=device,
                          views=views, schedule=schedule, on_result=on_result, jobs=jobs, store=store) if ran else \
            {"records": [], "failed": [], "files": {}}
    except BenchInterrupted as stop:
        records = stop.records
        note = (f"interrupted after {len(records)} finished row(s); run the same command again to resume "
                f"(finished cells in {Path(out_dir) / 'cells.jsonl'} are reused)")
        _write_results(model, pretrained, data, methods, shots, seeds, out_dir, schedule, records, [], skipped,
                       {"interrupted": True, "note": note})
        raise KeyboardInterrupt(f"{note}; the finished rows are in {Path(out_dir) / 'results.json'}") from None
    failures = [{k: f[k] for k in ("method", "shots", "seed", "error")} for f in bench["failed"]]
    result = _write_results(model, pretrained, data, methods, shots, seeds, out_dir, schedule, bench["records"],
                            failures, skipped)
    result["plot"] = bench["files"].get("shots_plot", "")
    return result


def _write_results(model: str, pretrained: str | None, data: str, methods: Sequence[str], shots: Sequence[int],
                   seeds: Sequence[int], out_dir: Path, schedule: str, records: Sequence[dict[str, Any]],
                   failures: list[dict[str, Any]], skipped: dict[str, str],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the job's ``results.json`` (rows in method, shots, seed order; ``skipped``: the methods whose
    quick schedule is not run, with the reason) and return it."""
    order = {m: i for i, m in enumerate(methods)}
    records = sorted(records, key=lambda r: (order[r["cell"]["method"]], r["cell"]["shots"], r["cell"]["seed"]))
    rows = [{**r["result"], "schedule": schedule_text(r["cell"]["method"], r["result"]["settings"])} for r in records]
    result = {"model": model, "pretrained": pretrained, "data": data, "shots": list(shots), "seeds": list(seeds),
              "schedule": schedule,
              "quick_schedules": {m: quick_settings(m) for m in methods if m not in skipped}
              if schedule == "quick" else {},
              "not_run": skipped, "rows": rows,
              "summary": sorted(job_summary(records, methods) + not_run_rows(skipped, shots),
                                key=lambda r: (order[r["method"]], r["shots"])),
              "failures": failures, **(extra or {})}
    atomic_write_json(Path(out_dir) / "results.json", result)
    return result


def not_run_rows(skipped: dict[str, str], shots: Sequence[int]) -> list[dict[str, Any]]:
    """Summary rows for methods the quick job skipped: no numbers, the reason instead."""
    return [{"method": m, "shots": k, "seeds": 0, "schedule": NOT_RUN, "reason": reason, "top1": None,
             "top1_std": None, "mean_per_class": None} for m, reason in skipped.items() for k in shots]


def job_summary(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Per method and shot count: mean and sample std of top-1 over seeds, mean per-class, mean cost."""
    rows = summarize(records, ("top1", "mean_per_class"))
    schedules = {(r["cell"]["method"], r["cell"]["shots"]): schedule_text(r["cell"]["method"], r["result"]["settings"])
                 for r in records}
    order = {m: i for i, m in enumerate(methods)}
    summary = []
    for row in sorted(rows, key=lambda r: (order.get(r.method, len(order)), r.shots)):
        top1, cost = row.metrics["top1"], row.cost
        summary.append({
            "method": row.method, "shots": row.shots, "seeds": top1.n, "schedule": schedules[(row.method, row.shots)],
            "top1": top1.mean, "top1_std": top1.std, "mean_per_class": row.metrics["mean_per_class"].mean,
            "trainable_parameters": int(cost["trainable_parameters"]), "artifact_bytes": int(cost["artifact_bytes"]),
            "fit_seconds": cost["fit_seconds"], "peak_memory_mb": cost["peak_memory_bytes"] / 2**20,
            "latency_ms_per_image": cost["latency_ms_per_image"],
        })
    return summary


def by_method(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method for the terminal: top-1 per shot count (``"k-shot"`` keys, mean and
    std over seeds), then the cost at the largest shot count; ``*`` marks a quick schedule,
    and a method the quick job skipped reads "not run (quick)" in every shot column."""
    rows: dict[str, dict[str, Any]] = {}
    for r in sorted(summary, key=lambda r: r["shots"]):
        if r["schedule"] == NOT_RUN:
            row = rows.setdefault(r["method"], {"method": r["method"], "params": "", "fit s": "", "ms/img": ""})
            row[f"{r['shots']}-shot"] = NOT_RUN
            continue
        quick = "*" if r["schedule"] != "paper" else ""
        row = rows.setdefault(r["method"], {"method": r["method"] + quick})
        row[f"{r['shots']}-shot"] = f"{r['top1']:.1f}" + (f" ± {r['top1_std']:.1f}" if r["seeds"] > 1 else "")
        row.update({"params": r["trainable_parameters"], "fit s": round(r["fit_seconds"], 1),
                    "ms/img": round(r["latency_ms_per_image"], 2)})
    return list(rows.values())
