"""``run_bench``: every cell (dataset x method x shots x seed) of one model, resumable, then the reports."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from vlkit.backbones.registry import offline_weights_digest
from vlkit.data.fewshot import DEFAULT_VAL_PER_CLASS, check_val_options
from vlkit.protocols.cells import Cell, CellLog, grid, val_key
from vlkit.protocols.bench_context import BenchContext
from vlkit.protocols.parallel_cells import CellOutcome, WorkerSpec, run_cells
from vlkit.protocols.sources import DataSource, sources_from_specs, with_test_subset
from vlkit.protocols.bench_progress import BenchProgress
from vlkit.protocols.catalog import get_protocol
from vlkit.report.writers import write_reports
from vlkit.errors import VlkitError

log = logging.getLogger("vlkit.protocols")
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
SCHEDULES = ("quick", "paper")


def quick_settings(name: str) -> dict[str, Any]:
    """The quick schedule's options for method ``name`` (its config's ``quick``; {} means its paper schedule)."""
    from vlkit.methods import method_class

    return dict(method_class(name).Config.quick)


def schedule_overrides(methods: Sequence[str], schedule: str,
                       settings: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Per-method options: the schedule's (``paper`` sets none; ``quick`` each config's ``quick``),
    then ``settings`` (method -> options) over them."""
    if schedule not in SCHEDULES:
        raise VlkitError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    chosen = {m: quick_settings(m) if schedule == "quick" else {} for m in methods}
    for name, options in (settings or {}).items():
        if name not in chosen:
            raise VlkitError(f"settings for {name!r}, which is not one of the chosen methods ({', '.join(methods)}): "
                             "add it to the methods or drop its settings")
        chosen[name] = {**chosen[name], **options}
    return {m: options for m, options in chosen.items() if options}


def resolve_methods(spec: str | Sequence[str], protocol: str = "fewshot") -> list[str]:
    """``"all"`` (every registered method the protocol accepts), ``"a,b"``, or ``"all,-maple"`` (all but some)."""
    from vlkit.methods import list_methods, method_class

    accepts = get_protocol(protocol).accepts
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    chosen: list[str] = []
    for item in items:
        if item == "all":
            chosen += [m for m in list_methods() if accepts(m)]
        elif not item.startswith("-"):
            method_class(item)  # an unknown name raises, listing the known ones
            chosen.append(item)
    for item in items:
        if item.startswith("-"):
            method_class(item[1:])
            chosen = [m for m in chosen if m != item[1:]]
    chosen = list(dict.fromkeys(chosen))
    if not chosen:
        raise VlkitError(f"--methods {','.join(items)!r} selects no method")
    return chosen


def _check_ints(values: Sequence[int], what: str, minimum: int) -> list[int]:
    values = list(dict.fromkeys(int(v) for v in values))
    if not values or any(v < minimum for v in values):
        raise VlkitError(f"--{what} needs integers >= {minimum}, got {values}")
    return values


def machine_info(device: Any = None) -> str:
    """One line: OS, CPU count, torch threads and the accelerator if any."""
    import torch

    accel = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {accel}, device {device or 'cpu'}")


def weights_identity(model: str, pretrained: str, backbone: Any = None) -> str:
    """Which weights ``model``/``pretrained`` stand for, without loading them (part of each cell's key).

    An offline model: a digest of its weight files, plus the checkpoint file's identity when one
    replaces some of its towers (``--model vlkit-mini --pretrained RUN/vlkit_mini_image.safetensors``).
    A checkpoint file: its size and modification time. A given backbone with neither: its
    fingerprint. An open_clip name with a pretrained tag: "" (the tag names the weights).
    """
    checkpoint = next((p for p in (Path(s).expanduser() for s in (model, pretrained) if s) if p.is_file()), None)
    file_identity = ""
    if checkpoint is not None:
        stat = checkpoint.stat()
        file_identity = f"{stat.st_size}-{stat.st_mtime_ns}"
    if identity := offline_weights_digest(model):
        return f"{identity}+{file_identity}" if file_identity else identity
    if file_identity:
        return file_identity
    return backbone.fingerprint if backbone is not None and not pretrained else ""


def run_bench(model: str = "vlkit-mini", pretrained: str | None = None,
              data: Sequence[str | DataSource] = ("fashion-mnist-mini",), methods: str | Sequence[str] = "all",
              shots: Sequence[int] = DEFAULT_SHOTS, seeds: Sequence[int] = DEFAULT_SEEDS,
              out: str | Path = "runs/bench", protocol: str = "fewshot", compare_published: bool = False,
              device: str | None = None, views: int | None = None, store: Any = None, backbone: Any = None,
              fail_fast: bool = False, schedule: str = "quick", test_per_class: int | None = None,
              settings: dict[str, dict[str, Any]] | None = None,
              on_result: Callable[[dict[str, Any]], None] | None = None, val: str = "auto",
              val_per_class: int = DEFAULT_VAL_PER_CLASS, jobs: int = 1) -> dict[str, Any]:
    """Run every missing cell, store each as it finishes, and write the reports into ``out``.

    A cell already in ``out/cells.jsonl`` is skipped, so a re-run after a crash or
    Ctrl-C completes only the missing cells and a finished bench does no work (the
    backbone is not even loaded). A failing cell is logged in ``failed.jsonl``, left
    out of the reports and retried by the next run (``fail_fast`` raises instead); a
    backbone or dataset that cannot be loaded stops the bench at once. ``schedule``
    ``quick`` (default) shortens only the tuners that run an encoder tower at every
    step; ``paper`` runs every method's published schedule. The options a cell ran
    with, and which weights the model name stood for, are part of its key and record;
    ``settings`` (method -> options) set options over the schedule's. Each cell stores
    its :class:`~vlkit.report.result.Result` as a dict; ``on_result`` is called with it.
    Validation (``val``, ``val_per_class``; :func:`vlkit.data.choose_validation`) comes from
    each dataset's val split by default (at most ``val_per_class`` per class), else from its
    train pool; the choice is part of each cell's key and recorded in its result.
    ``jobs`` > 1 runs cells in that many worker processes (:mod:`vlkit.protocols.parallel_cells`)
    when the bench is given by names (a ``backbone`` object, in-memory sources or a store
    with a Ray engine run in this process). Returns counts, the output files, the summary, this run's cell ``records`` (log order
    of the grid) and, with ``compare_published``, the published numbers that match the
    model and protocol.
    """
    proto = get_protocol(protocol)
    shots, seeds = _check_ints(shots, "shots", 1), _check_ints(seeds, "seeds", 0)
    check_val_options(val, val_per_class)
    method_names = resolve_methods(methods, proto.name)
    specs = [d for d in data if isinstance(d, str)]
    sources_given = any(isinstance(d, DataSource) for d in data)
    sources = [d for d in data if isinstance(d, DataSource)] + (sources_from_specs(specs) if specs else [])
    if not sources:
        raise VlkitError("--data names no dataset")
    if test_per_class is not None:
        sources = [with_test_subset(s, _check_ints([test_per_class], "test-per-class", 1)[0]) for s in sources]
    if len({s.name for s in sources}) != len(sources):
        raise VlkitError(f"--data names a dataset twice: {', '.join(s.name for s in sources)}")
    from vlkit.protocols.fewshot import DEFAULT_VIEWS

    views = DEFAULT_VIEWS if views is None else int(views)
    model_name = getattr(backbone, "name", model)
    tag = getattr(backbone, "pretrained", pretrained) or ""
    overrides = schedule_overrides(method_names, schedule, settings)
    cells = grid([s.name for s in sources], method_names, shots, seeds, proto.name, model_name, tag, views,
                 overrides, weights_identity(model_name, tag, backbone), val_key(val, val_per_class))
    out = Path(out).expanduser()
    cell_log = CellLog(out / "cells.jsonl")
    started = time.perf_counter()
    ran, failed = 0, []
    with cell_log:
        done = cell_log.done()
        todo = [c for c in cells if c.key not in done]
        log.info("bench: %d cells, %d done, %d to run, output in %s", len(cells), len(cells) - len(todo),
                 len(todo), out)
        context = BenchContext(model, pretrained, device, views, store, backbone, {s.name: s for s in sources})
        # a Ray engine spreads the extraction itself; its cluster belongs to this process
        in_process = backbone is not None or sources_given or getattr(store, "engine", None) is not None
        workers = 1 if in_process else min(int(jobs), len(todo))
        if workers > 1:
            log.info("bench: %d worker processes of %d thread(s) each", workers, _threads_per_job(workers))
        with BenchProgress(len(cells), len(cells) - len(todo), todo, done.values()) as bar, \
                _interruption_keeps(cells, cell_log):
            outcomes = _parallel(todo, workers, bar, model, pretrained, device, views, store, specs,
                                 test_per_class, proto.name) if workers > 1 else _in_process(todo, context, proto, bar, fail_fast)
            for outcome in outcomes:
                if outcome.error is not None:
                    if fail_fast:
                        outcomes.close()
                        raise VlkitError(f"cell {outcome.cell.label()} failed: {outcome.error}")
                    failed.append(_record_failure(out, outcome.cell, outcome))
                    bar.finish(outcome.cell, outcome.result_seconds, ok=False)
                    continue
                cell_log.append(outcome.cell, outcome.result)
                ran += 1
                bar.finish(outcome.cell, outcome.result["wall_seconds"])
                if on_result is not None:
                    on_result(outcome.result)
        done = cell_log.done()
    records = [done[c.key] for c in cells if c.key in done]
    info = {"model": model_name, "pretrained": tag, "protocol": proto.name, "device": context.device_name(),
            "schedule": schedule + "".join(f"; {m}: " + ", ".join(f"{k}={v}" for k, v in o.items())
                                           for m, o in overrides.items()),
            "machine": machine_info(context.device_name()),
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    reports = write_reports(out, records, [s.name for s in sources], method_names, shots, seeds,
                            list(proto.metrics), info, compare_published, failed)
    return {"out": str(out), "cells": len(cells), "ran": ran, "skipped": len(cells) - len(todo),
            "failed": failed, "missing": len(cells) - len(records), "seconds": time.perf_counter() - started,
            "records": records, **reports}


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a bench; ``records`` are the grid's finished cells (those in ``cells.jsonl``)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        super().__init__(f"interrupted with {len(records)} finished cell(s)")
        self.records = records


@contextlib.contextmanager
def _interruption_keeps(cells: Sequence[Cell], cell_log: CellLog) -> Iterator[None]:
    """Turn a KeyboardInterrupt into :class:`BenchInterrupted` carrying the finished cells."""
    try:
        yield
    except BenchInterrupted:
        raise
    except KeyboardInterrupt:
        done = cell_log.done()
        raise BenchInterrupted([done[c.key] for c in cells if c.key in done]) from None


def _threads_per_job(jobs: int) -> int:
    import torch

    return max(1, torch.get_num_threads() // jobs)


def _in_process(todo: Sequence[Cell], context: BenchContext, proto: Any, bar: BenchProgress,
                fail_fast: bool) -> Iterator[CellOutcome]:
    """Run the cells one after another in this process (the default, and with a GPU)."""
    for cell in todo:
        bar.start(cell)
        t0 = time.perf_counter()
        context.prepare(cell)  # the backbone and the data: a failure here stops the bench
        try:
            result = context.run(proto, cell)
        except Exception as exc:  # noqa: BLE001 - one broken method must not stop a long bench
            if fail_fast:
                raise
            yield CellOutcome(cell, error=f"{type(exc).__name__}: {exc}".splitlines()[0],
                              expected=isinstance(exc, VlkitError), trace=traceback.format_exc(),
                              seconds=time.perf_counter() - t0)
            continue
        yield CellOutcome(cell, {**result.to_dict(), "wall_seconds": time.perf_counter() - t0})


def _parallel(todo: Sequence[Cell], jobs: int, bar: BenchProgress, model: str, pretrained: str | None,
              device: str | None, views: int, store: Any, specs: Sequence[str], test_per_class: int | None,
              protocol: str) -> Iterator[CellOutcome]:
    spec = WorkerSpec(model, pretrained, device, views, store, tuple(specs), test_per_class, protocol,
                      _threads_per_job(jobs))
    return run_cells(todo, jobs, spec, on_start=bar.start)


def _record_failure(out: Path, cell: Cell, outcome: CellOutcome) -> dict[str, str]:
    failure = {"cell": cell.label(), "key": cell.key, "data": cell.data, "method": cell.method, "shots": cell.shots,
               "seed": cell.seed, "error": outcome.error,
               "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    log.error("cell %s failed: %s%s", cell.label(), failure["error"],
              "" if outcome.expected else "\n" + outcome.trace)
    with (out / "failed.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(failure) + "\n")
    return failure
