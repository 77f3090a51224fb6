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
from rich.table import Table

from vlkit.cli.validate import check_options
from vlkit.errors import VlkitError
from vlkit.io import atomic_write_json

out = Console()
err = Console(stderr=True)

ModelOpt = typer.Option("vlkit-mini", "--model", "-m", help="open_clip model name, or vlkit-mini / test-tiny")
PretrainedOpt = typer.Option(None, "--pretrained", "-p", help="pretrained tag (e.g. openai) or a local checkpoint file")
DeviceOpt = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)")
OutputOpt = typer.Option(None, "--output", "-o", help="write the result as JSON to this file")
SeedOpt = typer.Option(1, "--seed", help="few-shot sampling and training seed")
ValOpt = typer.Option("auto", "--val", help="validation for selection: auto (the data's val split when it has "
                      "one, else min(shots, 4) per class from train), split (the val split or an error), from-train")
ValPerClassOpt = typer.Option(16, "--val-per-class", help="at most this many val-split images per class")


def user_errors(fn: Callable) -> Callable:
    """Turn VlkitError into ``error: <message>`` on stderr and exit code 1 (no traceback).

    The shared options (``--seed``, ``--views``, ``--device``, ``--output`` ...) are checked
    first (:func:`vlkit.cli.validate.check_options`), before the command does any work.
    Ctrl-C exits with code 130 and one line: the interrupt's own message when the
    library gave one (what was kept, how to resume), else ``interrupted``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
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
    """Print ``rows`` as a rich table with ``columns`` on stdout."""
    tab = Table(title=title)
    for i, col in enumerate(columns):
        numeric = rows and isinstance(rows[0].get(col), (int, float)) or col.endswith("-shot")
        # the first column names the row: never truncated, the others give way
        tab.add_column(col, justify="right" if numeric else "left", no_wrap=i == 0,
                       min_width=max((len(fmt(r.get(col))) for r in rows), default=0) if i == 0 else None)
    for row in rows:
        tab.add_row(*(fmt(row.get(c)) for c in columns))
    out.print(tab)


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
