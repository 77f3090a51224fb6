"""Progress bars on stderr (rich), silent when stderr is not a terminal or VLKIT_QUIET=1."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

_console = Console(stderr=True)


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        """Move the bar ``n`` steps."""
        if self._progress is not None and n:
            self._progress.advance(self._task, n)


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[_Bar]:
    """A context manager yielding a bar with ``advance(n)``."""
    enabled = _console.is_terminal and os.environ.get("VLKIT_QUIET") != "1" and "pytest" not in sys.modules
    if not enabled:
        yield _Bar(None, None)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=_console, transient=True) as bar:
        yield _Bar(bar, bar.add_task(description, total=total))
