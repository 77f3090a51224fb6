"""Progress bars on stderr (rich). :func:`bars_enabled` is the one place that decides whether a bar shows.

A bar shows only when stderr is a terminal, the user has not set ``VLKIT_QUIET=1``
(read here, never written), and no caller is inside :func:`quiet`. When stderr is not a
terminal (a log file, a pipe, a batch job), progress goes through logging instead
(logger ``vlkit.progress``, INFO; the CLI shows it): a long step logs a line every
:data:`LOG_INTERVAL` seconds and one when it ends, and the bench logs each finished cell
(:func:`log_lines_enabled` decides). Two kinds of bar:

- :func:`progress`: a transient per-loop bar (the feature store's encoding, the training loop's epochs);
- :func:`tally`: a lasting bar of jobs done of all with a time-left field (the bench's cells).
  While a tally runs, the per-loop bars under it are silenced through :func:`quiet`, so
  one live display owns the terminal.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

__all__ = ["Bar", "LOG_INTERVAL", "LogBar", "bars_enabled", "log_lines_enabled", "quiet", "progress", "tally",
           "format_seconds"]

log = logging.getLogger("vlkit.progress")
LOG_INTERVAL = 30.0  # seconds between two progress lines of one long step in a log

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


def log_lines_enabled() -> bool:
    """Whether progress goes to the log as lines: stderr is not a terminal and no ``VLKIT_QUIET=1``.

    :func:`quiet` does not silence these lines: it hands a terminal to one live bar, and
    a log has no live bar.
    """
    return os.environ.get("VLKIT_QUIET") != "1" and not _stderr_is_terminal()


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


class LogBar(Bar):
    """A bar for a log: a line every ``interval`` seconds while the step runs, and one at its end
    if it ran that long (short steps write nothing)."""

    def __init__(self, total: int, description: str, interval: float = LOG_INTERVAL) -> None:
        super().__init__()
        self.total, self.description, self.interval = total, description, interval
        self.completed = 0
        self.started = self._last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` steps; log a line when ``interval`` seconds have passed since the last one."""
        self.completed += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line("")

    def update(self, description: str | None = None, completed: int | None = None, **fields: Any) -> None:
        """Change the text or the count done (no line of its own)."""
        self.description = description or self.description
        self.completed = self.completed if completed is None else completed

    def close(self) -> None:
        """Log the end of the step if it ran at least ``interval`` seconds."""
        if time.monotonic() - self.started >= self.interval:
            self._line(" done")

    def _line(self, suffix: str) -> None:
        elapsed = time.monotonic() - self.started
        rate = self.completed / elapsed if elapsed > 0 else 0.0
        left = format_seconds((self.total - self.completed) / rate) if rate > 0 else "?"
        log.info("%s: %d/%d%s after %s (about %s left)", self.description, self.completed, self.total, suffix,
                 format_seconds(elapsed), left if not suffix else "0:00:00")


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[Bar]:
    """A transient bar of ``total`` steps, yielded as a :class:`Bar` (a no-op one when bars are off,
    a :class:`LogBar` when stderr is a log)."""
    if not bars_enabled():
        if not log_lines_enabled():
            yield Bar()
            return
        bar = LogBar(total, description)
        yield bar
        bar.close()
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
