"""A bench's cells in worker processes (``--jobs N``): N processes of (threads / N) threads each.

On a CPU, the models vlkit adapts offline are small: inside one cell, most matrix
products are too small for two threads to split well, so one process of two threads
leaves much of the second core idle. Two processes of one thread each, running two
cells at once, keep both cores busy (``benchmarks/parallel_cells.py`` measures the
ratio side by side). Each worker loads the backbone once and runs cells sent to it; the
parent alone writes ``cells.jsonl``, reports progress and calls ``on_result``. Cells are
deterministic under their seed in either mode; the float rounding of a different thread
count can move a result in its last digits. Latency and memory are measured inside the
worker, with another cell running beside it.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from vlkit.errors import VlkitError
from vlkit.protocols.cells import Cell

_WORKER: dict[str, Any] = {}


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to rebuild the bench's context: names, never live objects."""

    model: str
    pretrained: str | None
    device: str | None
    views: int
    store: Any  # a FeatureStore (plain attributes: it pickles) or None
    specs: tuple[str, ...]
    test_per_class: int | None
    protocol: str
    threads: int


@dataclass
class CellOutcome:
    """A finished cell: its result dict (with ``wall_seconds``) or the error it raised."""

    cell: Cell
    result: dict[str, Any] | None = None
    error: str | None = None  # "Type: message", first line
    expected: bool = True  # a VlkitError (one-line user error) rather than a bug
    trace: str = ""
    seconds: float = 0.0  # wall time of a failed cell

    @property
    def result_seconds(self) -> float:
        """Wall seconds of the cell, finished or failed."""
        return float(self.result["wall_seconds"]) if self.result is not None else self.seconds


def default_jobs() -> int:
    """``--jobs auto``: 2 on a CPU machine of 2 or more cores, else 1 (a GPU runs one cell at a time)."""
    try:
        import torch

        if torch.cuda.is_available():
            return 1
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def _init_worker(spec: WorkerSpec) -> None:
    import torch

    from vlkit.protocols.bench_context import BenchContext
    from vlkit.protocols.sources import sources_from_specs, with_test_subset

    torch.set_num_threads(spec.threads)
    sources = sources_from_specs(list(spec.specs))
    if spec.test_per_class is not None:
        sources = [with_test_subset(s, spec.test_per_class) for s in sources]
    _WORKER["context"] = BenchContext(spec.model, spec.pretrained, spec.device, spec.views, spec.store, None,
                                  {s.name: s for s in sources})
    _WORKER["protocol"] = spec.protocol


def _run_cell(cell: Cell) -> CellOutcome:
    from vlkit.errors import VlkitError
    from vlkit.protocols.catalog import get_protocol

    context = _WORKER["context"]
    t0 = time.perf_counter()
    context.prepare(cell)
    try:
        result = context.run(get_protocol(_WORKER["protocol"]), cell)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        return CellOutcome(cell, error=f"{type(exc).__name__}: {exc}".splitlines()[0],
                           expected=isinstance(exc, VlkitError), trace=traceback.format_exc(),
                           seconds=time.perf_counter() - t0)
    return CellOutcome(cell, {**result.to_dict(), "wall_seconds": time.perf_counter() - t0})


@contextlib.contextmanager
def _no_shadowing_path() -> Iterator[None]:
    """Hide, while workers start, the ``sys.path`` entries that would import another ``vlkit``.

    A spawned worker rebuilds ``sys.path`` from this process's: if a script put a source
    checkout on it after ``vlkit`` was imported from site-packages (the repository's
    ``scripts/`` do ``sys.path.insert(0, ROOT)``), the worker would import the checkout's
    ``vlkit``, which lacks the installed package's mapped folders (``vlkit.caches``).
    """
    home = Path(__file__).resolve().parents[2]  # the folder this vlkit package sits in
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if Path(p or ".").resolve() == home
                   or not (Path(p or ".") / "vlkit" / "__init__.py").is_file()]
    try:
        yield
    finally:
        sys.path[:] = saved


def run_cells(todo: Sequence[Cell], jobs: int, spec: WorkerSpec, on_start: Any = None) -> Iterator[CellOutcome]:
    """Run ``todo`` on ``jobs`` worker processes; yield each outcome as it finishes.

    Cells are sent largest few-shot sample first, so the long cells do not run last on one
    worker while the other waits. Closing the generator early (fail-fast, Ctrl-C) cancels
    the cells not yet started and stops the workers.
    """
    order = sorted(todo, key=lambda c: -c.shots)  # stable: grid order within a shot count
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(spec,))
    pending: dict[Future, Cell] = {}
    queue = list(order)
    try:
        while queue or pending:
            while queue and len(pending) < jobs:  # one cell per idle worker: the rest wait in order
                cell = queue.pop(0)
                if on_start is not None:
                    on_start(cell)
                with _no_shadowing_path():  # a worker may start here
                    pending[pool.submit(_run_cell, cell)] = cell
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                pending.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    raise VlkitError(
                        "a worker process of --jobs died (killed, out of memory, or a script that calls "
                        "run_bench(jobs=N) outside `if __name__ == '__main__':`, which spawned workers re-run); "
                        "guard the script or use jobs=1") from None
                yield outcome
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
