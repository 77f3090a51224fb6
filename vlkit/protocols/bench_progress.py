"""Bench progress: cells done of all, the running cell, and an estimate of the time left.

The estimate sums, over the cells still to run, the mean wall time of finished cells
of the same method (from this run and from earlier runs in the log), else the mean
of all finished cells. The bar is a :func:`vlkit.progress.tally`, which decides whether it
shows and silences the store's and the training loop's bars while it runs. Every
finished cell is also logged: to ``vlkit.progress`` when stderr is a log (no bar; the
CLI shows these lines, one per cell), else to ``vlkit.protocols``.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
from collections import defaultdict
from typing import Any, Iterable

from vlkit.progress import Bar, format_seconds, log_lines_enabled, tally
from vlkit.progress import log as progress_log
from vlkit.protocols.cells import Cell

log = logging.getLogger("vlkit.protocols")


class BenchProgress:
    """Context manager: ``start(cell)`` before a cell, ``finish(cell, seconds)`` after it."""

    def __init__(self, total: int, done: int, todo: Iterable[Cell], history: Iterable[dict[str, Any]]) -> None:
        self.total, self.done = total, done
        self.todo = list(todo)
        self.seconds: dict[str, list[float]] = defaultdict(list)
        for record in history:  # earlier runs' timings seed the estimate
            wall = record.get("result", {}).get("wall_seconds")
            if wall is not None:
                self.seconds[record["cell"]["method"]].append(float(wall))
        self._stack = contextlib.ExitStack()
        self._bar = Bar()

    def eta(self) -> float | None:
        """Estimated seconds for the cells not yet finished (None before any timing is known)."""
        every = [s for values in self.seconds.values() for s in values]
        if not self.todo:
            return 0.0
        if not every:
            return None
        overall = statistics.fmean(every)
        return sum(statistics.fmean(self.seconds[c.method]) if self.seconds.get(c.method) else overall
                   for c in self.todo)

    def __enter__(self) -> "BenchProgress":
        self._bar = self._stack.enter_context(tally(self.total, self.done, "bench", unit="cells",
                                                    eta=format_seconds(self.eta())))
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.update(description="bench " + ("done" if self.done == self.total else "stopped"))
        self._stack.close()

    def start(self, cell: Cell) -> None:
        """Show ``cell`` as running."""
        self._bar.update(description=cell.label(), eta=format_seconds(self.eta()))

    def finish(self, cell: Cell, seconds: float, ok: bool = True) -> None:
        """Count ``cell`` as finished (or failed) after ``seconds`` of wall time."""
        self.todo = [c for c in self.todo if c != cell]
        if ok:
            self.seconds[cell.method].append(seconds)
            self.done += 1
        left = self.eta()
        (progress_log if log_lines_enabled() else log).info("%s %s in %.1fs (%d/%d cells, about %s left)", "finished" if ok else "failed", cell.label(),
                 seconds, self.done, self.total, format_seconds(left))
        self._bar.update(completed=self.done, eta=format_seconds(left))
