"""Bench progress on stderr: cells done of all, the running cell, and an estimate of the time left.

The estimate sums, over the cells still to run, the mean wall time of finished cells
of the same method (from this run and from earlier runs in the log), else the mean
of all finished cells. Silent when stderr is not a terminal, under pytest, or with
``VLKIT_QUIET=1``; every finished cell is also logged (logger ``vlkit.protocols``).
"""
from __future__ import annotations

import logging
import os
import statistics
import sys
from collections import defaultdict
from typing import Any, Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vlkit.protocols.cells import Cell

log = logging.getLogger("vlkit.protocols")


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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
        console = Console(stderr=True)
        enabled = console.is_terminal and os.environ.get("VLKIT_QUIET") != "1" and "pytest" not in sys.modules
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("cells"), TimeElapsedColumn(), TextColumn("left ~{task.fields[eta]}"),
                             console=console, transient=False) if enabled else None
        self._task: Any = None
        self._quiet: str | None = None

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
        if self._bar is not None:
            # one live display: the store's and the training loop's own bars would interleave with this one
            self._quiet = os.environ.get("VLKIT_QUIET")
            os.environ["VLKIT_QUIET"] = "1"
            self._bar.start()
            self._task = self._bar.add_task("bench", total=self.total, completed=self.done, eta=_fmt(self.eta()))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description="bench " + ("done" if self.done == self.total else "stopped"))
            self._bar.stop()
            if self._quiet is None:
                os.environ.pop("VLKIT_QUIET", None)
            else:
                os.environ["VLKIT_QUIET"] = self._quiet

    def start(self, cell: Cell) -> None:
        """Show ``cell`` as running."""
        if self._bar is not None:
            self._bar.update(self._task, description=cell.label(), eta=_fmt(self.eta()))

    def finish(self, cell: Cell, seconds: float, ok: bool = True) -> None:
        """Count ``cell`` as finished (or failed) after ``seconds`` of wall time."""
        self.todo = [c for c in self.todo if c != cell]
        if ok:
            self.seconds[cell.method].append(seconds)
            self.done += 1
        left = self.eta()
        log.info("%s %s in %.1fs (%d/%d cells, about %s left)", "finished" if ok else "failed", cell.label(),
                 seconds, self.done, self.total, _fmt(left))
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, eta=_fmt(left))
