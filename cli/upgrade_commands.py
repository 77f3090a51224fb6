"""``vlkit upgrade init|add`` and ``vlkit predict``: thin over :mod:`vlkit.apps.upgrade`.

Each command parses, calls one library function that returns a dict, and prints a
table (or JSON with ``--json``; ``--output FILE`` also writes the JSON, atomically).
The model, pretrained, device and output options are the shared ones of
:mod:`vlkit.cli.common`. User errors are :class:`vlkit.errors.VlkitError` and propagate
to the main app's handler.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from vlkit.cli.common import DeviceOpt, ModelOpt, OutputOpt, PretrainedOpt, write_json

# the library (torch, the cache model) is imported inside each command: `vlkit --help` stays fast
DEFAULT_ALPHA, DEFAULT_BETA, RETUNE_MIN = 1.0, 5.5, 3  # vlkit.apps.upgrade's (a test checks they agree)

upgrade_app = typer.Typer(help="A classifier that starts zero-shot and improves as labelled images arrive.",
                          no_args_is_help=True, add_completion=False)
_out = Console()

RunArg = typer.Argument(..., help="Run folder (created by `vlkit upgrade init`).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
SkipOpt = typer.Option(False, "--skip-corrupt", help="Skip unreadable images (named in a warning) instead of failing.")


def readable_images(images: List[Path], skip_corrupt: bool) -> List[Path]:
    """``images`` without the unreadable ones when ``skip_corrupt`` (a warning names them), else as given."""
    if not skip_corrupt:
        return images
    from vlkit.data import open_image
    from vlkit.errors import DataError, VlkitError

    kept, skipped = [], []
    for path in images:
        try:
            open_image(path)
            kept.append(path)
        except DataError:
            skipped.append(str(path))
    if skipped:
        logging.getLogger("vlkit.data").warning("skipped %d unreadable image(s), first: %s", len(skipped), skipped[0])
    if not kept:
        raise VlkitError(f"none of the {len(images)} image(s) could be read; first: {skipped[0]}")
    return kept


def _emit(result: dict, as_json: bool, output: Optional[Path], table: Table) -> None:
    write_json(output, result)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
    else:
        _out.print(table)


def _pairs(title: str, result: dict, keys: List[str]) -> Table:
    table = Table(title=title, show_header=False)
    for key in keys:
        table.add_row(key, str(result[key]))
    return table


@upgrade_app.command("init")
def init_command(
    run: Path = RunArg,
    classes: Path = typer.Option(..., "--classes", help="Text file with one class name per line."),
    model: str = ModelOpt,
    pretrained: Optional[str] = PretrainedOpt,
    template: Optional[List[str]] = typer.Option(None, "--template", help="Prompt template with '{}' (repeatable)."),
    alpha: float = typer.Option(DEFAULT_ALPHA, "--alpha", help="Weight of the cache (Tip-Adapter alpha)."),
    beta: float = typer.Option(DEFAULT_BETA, "--beta", help="Sharpness of the cache affinities."),
    retune: bool = typer.Option(True, "--retune/--no-retune",
                                help="Re-choose alpha/beta by leave-one-out once every class has "
                                     "--retune-min examples."),
    retune_min: int = typer.Option(RETUNE_MIN, "--retune-min", help="Examples per class before retuning."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run in RUN."),
    device: Optional[str] = DeviceOpt, as_json: bool = JsonOpt, output: Optional[Path] = OutputOpt,
) -> None:
    """Create a zero-shot run for the classes in --classes (model: vlkit-mini unless --model)."""
    from vlkit.apps import upgrade as lib

    result = lib.init_run(run, model, lib.read_classes(classes), pretrained=pretrained, templates=template,
                          alpha=alpha, beta=beta, retune=retune, retune_min=retune_min, device=device, force=force)
    summary = _pairs(f"run {run} (zero-shot)", result, ["model", "classes", "embed_dim", "examples"])
    _emit(result, as_json, output, summary)


@upgrade_app.command("add")
def add_command(
    run: Path = RunArg,
    images: List[Path] = typer.Argument(..., help="Image files of one class."),
    label: str = typer.Option(..., "--label", help="Their class name (one of the run's classes)."),
    skip_corrupt: bool = SkipOpt, device: Optional[str] = DeviceOpt, as_json: bool = JsonOpt, output: Optional[Path] = OutputOpt,
) -> None:
    """Add labelled images to the run's cache (no refitting)."""
    from vlkit.apps import upgrade as lib

    result = lib.add_images(run, readable_images(images, skip_corrupt), label, device=device)
    table = Table(title=f"run {run}: +{result['added']} {label!r}, {result['examples']} examples, "
                        f"alpha {result['alpha']:.3g}, beta {result['beta']:.3g}")
    table.add_column("class")
    table.add_column("examples", justify="right")
    for name, count in result["per_class"].items():
        table.add_row(name, str(count))
    _emit(result, as_json, output, table)


def predict_command(
    run: Path = RunArg,
    images: List[Path] = typer.Argument(..., help="Image files to classify."),
    top_k: int = typer.Option(5, "--top-k", "-k", help="How many classes to show per image."),
    skip_corrupt: bool = SkipOpt, device: Optional[str] = DeviceOpt, as_json: bool = JsonOpt, output: Optional[Path] = OutputOpt,
) -> None:
    """Classify images with an upgrade run: top-k classes with probabilities."""
    from vlkit.apps import upgrade as lib

    result = lib.predict_images(run, readable_images(images, skip_corrupt), top_k=top_k, device=device)
    table = Table(title=f"run {run} ({result['examples']} examples, "
                        f"{1000 * result['seconds_per_image']:.1f} ms/image)")
    table.add_column("image")
    table.add_column("class")
    table.add_column("probability", justify="right")
    for row in result["predictions"]:
        for rank, guess in enumerate(row["top"]):
            table.add_row(row["image"] if rank == 0 else "", guess["class"], f"{guess['probability']:.3f}")
    _emit(result, as_json, output, table)
