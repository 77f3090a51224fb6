"""The main job's plot (issue 21, item 11): 26 methods look distinct and the legend stays off the data."""
from __future__ import annotations

import json
from pathlib import Path

from vlkit.report.plots import method_style, plot_accuracy_vs_shots
from vlkit.report.tables import build_summary

CATALOG = json.loads((Path(__file__).parents[1] / "cli" / "methods_catalog.json").read_text())


def test_every_method_has_its_own_colour_marker_and_line_combination() -> None:
    methods = [row["name"] for row in CATALOG]
    style = method_style(methods, {row["name"]: row["family"] for row in CATALOG})
    looks = {(s["color"], s["marker"], str(s["linestyle"])) for s in style.values()}
    assert len(methods) > 20 and len(looks) == len(methods)
    colours = {s["color"] for s in style.values()}
    assert all(sum(c[:3]) < 2.6 for c in colours), "a pale colour (tab20's light halves) is back"


def test_the_legend_sits_outside_the_axes(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    methods = [row["name"] for row in CATALOG]
    records = [{"cell": {"data": "shop", "method": m, "shots": k, "seed": 1},
                "result": {"top1": 30.0 + i + k, "family": CATALOG[i]["family"]}}
               for i, m in enumerate(methods) for k in (1, 4, 16)]
    summary = build_summary(records, ["shop"], methods, [1, 4, 16], [1], ["top1"], {"model": "m"})
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to measure it
    plot_accuracy_vs_shots(summary, tmp_path / "shots.png")
    fig = figures[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes_box = fig.axes[0].get_window_extent(renderer)
    legend_box = fig.legends[0].get_window_extent(renderer)
    assert legend_box.x0 >= axes_box.x1, "the legend overlaps the plotting area"
    assert (tmp_path / "shots.png").stat().st_size > 0
