"""``vlkit upgrade init|add`` and ``vlkit predict``: thin over :mod:`vlkit.apps.upgrade`.

Each command parses, calls one library function that returns a dict, and prints a
table (or JSON with ``--json``; ``--output FILE`` also writes the JSON, atomically).
The model, pretrained, device and output options are the shared ones of
:mod:`vlkit.cli.common`. User errors are :class:`vlkit.errors.VlkitError` and propagate
to the main app's handler.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from vlkit.apps import upgrade as lib
from vlkit.cli.common import DeviceOpt, ModelOpt, OutputOpt, PretrainedOpt, write_json

upgrade_app = typer.Typer(help="A classifier that starts zero-shot and improves as labelled images arrive.",
                          no_args_is_help=True, add_completion=False)
_out = Console()

RunArg = typer.Argument(..., help="Run folder (created by `vlkit upgrade init`).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")


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
    model: str = ModelOpt,
    classes: Path = typer.Option(..., "--classes", help="Text file with one class name per line."),
    pretrained: Optional[str] = PretrainedOpt,
    template: Optional[List[str]] = typer.Option(None, "--template", help="Prompt template with '{}' (repeatable)."),
    alpha: float = typer.Option(lib.DEFAULT_ALPHA, "--alpha", help="Weight of the cache (Tip-Adapter alpha)."),
    beta: float = typer.Option(lib.DEFAULT_BETA, "--beta", help="Sharpness of the cache affinities."),
    retune: bool = typer.Option(True, "--retune/--no-retune",
                                help="Re-choose alpha/beta by leave-one-out once every class has "
                                     "--retune-min examples."),
    retune_min: int = typer.Option(lib.RETUNE_MIN, "--retune-min", help="Examples per class before retuning."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run in RUN."),
    device: Optional[str] = DeviceOpt, as_json: bool = JsonOpt, output: Optional[Path] = OutputOpt,
) -> None:
    """Create a zero-shot run for the classes in --classes."""
    result = lib.init_run(run, model, lib.read_classes(classes), pretrained=pretrained, templates=template,
                          alpha=alpha, beta=beta, retune=retune, retune_min=retune_min, device=device, force=force)
    summary = _pairs(f"run {run} (zero-shot)", result, ["model", "classes", "embed_dim", "examples"])
    _emit(result, as_json, output, summary)


@upgrade_app.command("add")
def add_command(
    run: Path = RunArg,
    images: List[Path] = typer.Argument(..., help="Image files of one class."),
    label: str = typer.Option(..., "--label", help="Their class name (one of the run's classes)."),
    device: Optional[str] = DeviceOpt, as_json: bool = JsonOpt, output: Optional[Path] = OutputOpt,
) -> None:
    """Add labelled images to the run's cache (no refitting)."""
    result = lib.add_images(run, images, label, device=device)
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
    device: Optional[str] = DeviceOpt, as_json: bool = JsonOpt, output: Optional[Path] = OutputOpt,
) -> None:
    """Classify images with an upgrade run: top-k classes with probabilities."""
    result = lib.predict_images(run, images, top_k=top_k, device=device)
    table = Table(title=f"run {run} ({result['examples']} examples, "
                        f"{1000 * result['seconds_per_image']:.1f} ms/image)")
    table.add_column("image")
    table.add_column("class")
    table.add_column("probability", justify="right")
    for row in result["predictions"]:
        for rank, guess in enumerate(row["top"]):
            table.add_row(row["image"] if rank == 0 else "", guess["class"], f"{guess['probability']:.3f}")
    _emit(result, as_json, output, table)
