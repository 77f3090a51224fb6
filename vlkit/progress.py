"""Progress bars on stderr (rich). :func:`bars_enabled` is the one place that decides whether a bar shows.

A bar shows only when stderr is a terminal, the user has not set ``VLKIT_QUIET=1``
(read here, never written), and no caller is inside :func:`quiet`. Two kinds:

- :func:`progress`: a transient per-loop bar (the feature store's encoding, the training loop's epochs);
- :func:`tally`: a lasting bar of jobs done of all with a time-left field (the bench's cells).
  While a tally runs, the per-loop bars under it are silenced through :func:`quiet`, so
  one live display owns the terminal.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

__all__ = ["Bar", "bars_enabled", "quiet", "progress", "tally", "format_seconds"]

_silenced = 0  # how many quiet() blocks are open, in any thread
_silenced_lock = threading.Lock()


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def bars_enabled() -> bool:
    """Whether a bar started now would show (terminal stderr, no ``VLKIT_QUIET=1``, not inside :func:`quiet`)."""
    return _silenced == 0 and os.environ.get("VLKIT_QUIET") != "1" and _stderr_is_terminal()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence every bar started inside this block (blocks nest; the environment is not touched)."""
    global _silenced
    with _silenced_lock:
        _silenced += 1
    try:
        yield
    finally:
        with _silenced_lock:
            _silenced -= 1


class Bar:
    """A handle on a shown bar, or a no-op stand-in when bars are off (``shown`` says which)."""

    def __init__(self, display: Progress | None = None, task: Any = None) -> None:
        self._display, self._task = display, task

    @property
    def shown(self) -> bool:
        """True when this bar is drawn on stderr."""
        return self._display is not None

    def advance(self, n: int = 1) -> None:
        """Move the bar ``n`` steps."""
        if self._display is not None and n:
            self._display.advance(self._task, n)

    def update(self, description: str | None = None, completed: int | None = None, **fields: Any) -> None:
        """Change the text, the count done, or a field (``eta`` of a :func:`tally`)."""
        if self._display is not None:
            self._display.update(self._task, description=description, completed=completed, **fields)


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[Bar]:
    """A transient bar of ``total`` steps, yielded as a :class:`Bar` (a no-op one when bars are off)."""
    if not bars_enabled():
        yield Bar()
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as display:
        yield Bar(display, display.add_task(description, total=total))


@contextlib.contextmanager
def tally(total: int, done: int, description: str, unit: str = "jobs", eta: str = "?") -> Iterator[Bar]:
    """A lasting bar: ``done`` of ``total`` ``unit``, time elapsed, and a time-left field ``eta``.

    Per-loop bars started inside are silenced while it runs; update the count and the
    estimate with ``bar.update(completed=..., eta=...)``.
    """
    shown = bars_enabled()  # decided before quiet(), which would otherwise hide this bar too
    with quiet():
        if not shown:
            yield Bar()
            return
        display = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                           TimeElapsedColumn(), TextColumn("left ~{task.fields[eta]}"),
                           console=Console(stderr=True), transient=False)
        with display:
            yield Bar(display, display.add_task(description, total=total, completed=done, eta=eta))


def format_seconds(seconds: float | None) -> str:
    """``H:MM:SS`` (``?`` for an unknown duration)."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
