"""Shared CLI plumbing: one-line user errors, JSON output, rich tables, option types."""
from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from vlkit.cli.validate import check_options
from vlkit.errors import VlkitError
from vlkit.io import atomic_write_json

out = Console()
err = Console(stderr=True)

ModelOpt = typer.Option("vlkit-mini", "--model", "-m", help="open_clip model name, or vlkit-mini / test-tiny")
PretrainedOpt = typer.Option(None, "--pretrained", "-p", help="pretrained tag (e.g. openai) or a local checkpoint file")
DeviceOpt = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)")
DATA_HELP = ("offline dataset name, image folder, or WebDataset shards (a .tar, a shards-{000000..000009}.tar "
             "pattern, or a folder of .tar shards)")
OutputOpt = typer.Option(None, "--output", "-o", help="write the result as JSON to this file")
SeedOpt = typer.Option(1, "--seed", help="few-shot sampling and training seed")
ValOpt = typer.Option("auto", "--val", help="validation for selection: auto (the data's val split when it has "
                      "one, else min(shots, 4) per class from train), split (the val split or an error), from-train")
ValPerClassOpt = typer.Option(16, "--val-per-class", help="at most this many val-split images per class")
JobsOpt = typer.Option("1", "--jobs", "-j", help="cells run at once, each in its own process with threads / jobs "
                       "threads; auto: 2 on a CPU machine of 2 or more cores, 1 with a GPU")


def parse_jobs(text: str) -> int:
    """``--jobs``: a positive integer or ``auto``."""
    if text == "auto":
        from vlkit.protocols.parallel_cells import default_jobs

        return default_jobs()
    if not text.isdigit() or int(text) < 1:
        raise VlkitError(f"--jobs must be a positive integer or auto, got {text!r}")
    return int(text)
EngineOpt = typer.Option("local", "--engine", help="feature extraction: local (this process) or ray (a Ray Data "
                        'pipeline; needs pip install "vlkit[ray]")')
RayAddressOpt = typer.Option(None, "--ray-address", help="with --engine ray: join the Ray cluster at HOST:PORT "
                             "(default: start a local one)")
WorkersOpt = typer.Option(None, "--workers", min=1, help="with --engine ray: encoder workers, one model each "
                          "(default: one per GPU, else 1)")


class OnceFilter(logging.Filter):
    """Let each distinct message through once (the same warning from the train and the test split
    of one folder, e.g. ``--skip-corrupt``'s count, is printed once)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def setup_logging() -> None:
    """Warnings to stderr, each once; progress lines (INFO, ``vlkit.progress``) when stderr is a log."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and not any(isinstance(f, OnceFilter) for f in handler.filters):
            handler.addFilter(OnceFilter())
    logging.getLogger("vlkit.progress").setLevel(logging.INFO)


def user_errors(fn: Callable) -> Callable:
    """Turn VlkitError into ``error: <message>`` on stderr and exit code 1 (no traceback).

    The shared options (``--seed``, ``--views``, ``--device``, ``--output`` ...) are checked
    first (:func:`vlkit.cli.validate.check_options`), before the command does any work.
    Ctrl-C exits with code 130 and one line: the interrupt's own message when the
    library gave one (what was kept, how to resume), else ``interrupted``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        try:
            check_options(kwargs)
            return fn(*args, **kwargs)
        except VlkitError as exc:
            message = " ".join(str(exc).split())  # one line, whatever the message held
            err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            err.print(escape(" ".join(str(exc).split())) or "interrupted", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper


def write_json(path: Optional[Path], result: Any) -> None:
    """Write ``result`` as JSON to ``path`` (atomically) if given."""
    if path is None:
        return
    atomic_write_json(Path(path), result, sort_keys=False, default=str)
    err.print(f"wrote {path}")


def fmt(value: Any) -> str:
    """Format a table cell: floats to 2 decimals, bytes/params with thousands separators."""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def table(rows: list[dict], columns: list[str], title: str | None = None) -> None:
    """Print ``rows`` as a rich table with ``columns`` on stdout.

    Headers are never cut: every column is at least as wide as its header, the first
    column and the numbers never wrap. On a terminal the text columns wrap to fit; into
    a file or a pipe the table is printed at its natural width, however wide.
    """
    tab = Table(title=title)
    for i, col in enumerate(columns):
        cells = [fmt(r.get(col)) for r in rows]
        numeric = rows and isinstance(rows[0].get(col), (int, float)) or col.endswith("-shot")
        whole = i == 0 or bool(numeric)  # the row's name and numbers stay on one line
        tab.add_column(col, justify="right" if numeric else "left", no_wrap=whole,
                       min_width=max([len(col), *(len(c) for c in cells)]) if whole else len(col))
    for row in rows:
        tab.add_row(*(fmt(row.get(c)) for c in columns))
    if out.is_terminal:
        out.print(tab)
        return
    natural = Measurement.get(out, out.options.update(width=10_000), tab).maximum
    Console(width=max(out.width, natural)).print(tab)


def parse_list(text: str, kind: type = str, option: str = "") -> list:
    """'1,4,16' -> [1, 4, 16]; a bad item, or no item at all (',' or ''), raises a one-line VlkitError.

    ``option`` (``"--shots"``) names the option in the message.
    """
    name = f"{option} " if option else ""
    try:
        values = [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise VlkitError(f"{name}cannot read {text!r} as a comma-separated list of {kind.__name__}") from None
    if not values:
        raise VlkitError(f"{name}{text!r} holds no values: give a comma-separated list of {kind.__name__}, "
                         f"such as {'1,4,16' if kind is int else 'a,b'}")
    return values


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """['epochs=5', 'lr=0.01'] -> {'epochs': 5, 'lr': 0.01} (JSON values, else strings)."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise VlkitError(f"--set takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip()] = value
    return settings
