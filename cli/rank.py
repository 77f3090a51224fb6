"""``vlkit rank``: choose a model before adapting it (transferability metrics on cached features)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from vlkit.cli.common import DATA_HELP, DeviceOpt, OutputOpt, SeedOpt, err, parse_list, table, write_json


def metric_cells(result: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Table rows: per model each metric as ``rank (value)``, the mean rank and the seconds."""
    metrics = list(result["rankings"])
    rows = []
    for row in sorted(result["rows"], key=lambda r: r["mean_rank"]):
        cells = {"model": row["model"], "dim": row["embed_dim"], "mean rank": row["mean_rank"],
                 "features s": f"{row['features_seconds']:.2f} ({row['cache']})",
                 "metrics s": row["metrics_seconds"]}
        for metric in metrics:
            cells[metric] = f"{row['ranks'][metric]} ({row['scores'][metric]:.3g})"
        rows.append(cells)
    return rows, ["model", "dim", *metrics, "mean rank", "features s", "metrics s"]


def rank_command(
    models: str = typer.Option(..., "--models", help="comma-separated: offline models (vlkit-mini, test-tiny), "
                               "open_clip NAME:TAG or NAME:/path/checkpoint, or vlkit-mini training-run folders"),
    data: str = typer.Option("fashion-mnist-mini", "--data", "-d", help=DATA_HELP),
    shots: int = typer.Option(16, "--shots", "-k", help="labelled images per class the metrics see"),
    seed: int = SeedOpt,
    source: Optional[str] = typer.Option(None, "--source", help="a labelled source domain with the same classes "
                                         "(adds OTCE)"),
    layers: bool = typer.Option(False, "--layers", help="rank the image-tower blocks of the one model in "
                                "--models (the features Head2Toe and LST read) instead of models"),
    device: Optional[str] = DeviceOpt, output: Optional[Path] = OutputOpt,
) -> None:
    """Rank models for your data before adapting: LogME, LEEP, NCE, H-score, GBC, NLEEP, SFDA, text, OTCE.

    Features come from the feature store (a second ranking encodes nothing). Each metric ranks
    the models (1 = best); the recommendation is the best mean rank over the metrics.
    """
    from vlkit.apps.commands import rank, rank_layers

    names = parse_list(models, option="--models")
    if layers:
        if len(names) != 1 or source is not None:
            err.print("[red]error:[/red] --layers ranks the blocks of one model: give one name in --models "
                      "(and no --source)", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        result = rank_layers(names[0], data, shots, seed, device)
    else:
        result = rank(names, data, shots, seed, source, device)
    if result["rows"]:
        rows, columns = metric_cells(result)
        table(rows, columns, title=f"{data}: {shots} shots x {result['classes']} classes, seed {seed} "
                                   "(rank (score), 1 = best)")
        err.print(f"recommendation: {result['recommendation']} ({result['recommendation_rule']})",
                  highlight=False, soft_wrap=True)
    write_json(output, result)
    for failure in result["failures"]:
        err.print(f"[red]error:[/red] {failure['model']}: {failure['error']}", highlight=False, soft_wrap=True)
    if result["failures"]:
        raise typer.Exit(1)
