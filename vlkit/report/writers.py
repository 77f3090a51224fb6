"""Write a bench's reports: ``results.md``, ``summary.json``, two PNG plots and ``report.html``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from vlkit.report.tables import build_summary, to_markdown
from vlkit.io import atomic_write_bytes

FILES = {"markdown": "results.md", "summary": "summary.json", "shots_plot": "accuracy_vs_shots.png",
         "cost_plot": "accuracy_vs_cost.png", "html": "report.html"}


def write_reports(out: Path, records: Sequence[dict[str, Any]], datasets: Sequence[str], methods: Sequence[str],
                  shots: Sequence[int], seeds: Sequence[int], metrics: Sequence[str], info: dict[str, Any],
                  compare_published: bool = False, failures: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Summarise ``records`` and write every report; returns the paths, the summary and the tables."""
    from vlkit.report.html_page import to_html
    from vlkit.report.plots import plot_accuracy_vs_cost, plot_accuracy_vs_shots
    from vlkit.report.published import compare, compare_markdown

    out.mkdir(parents=True, exist_ok=True)
    if not records:
        return {"files": {}, "summary": None, "table": "", "published": None}
    summary = build_summary(records, datasets, methods, shots, seeds, metrics, info)
    comparison = compare(summary) if compare_published else None
    published_md = compare_markdown(comparison, info.get("model", "")) if compare_published else None
    markdown = to_markdown(summary, published_md)
    paths = {key: out / name for key, name in FILES.items()}
    atomic_write_bytes(paths["markdown"], markdown.encode())
    atomic_write_bytes(paths["summary"], json.dumps({**summary.as_dict(), "published": comparison}, indent=1,
                                                    default=str).encode())
    plot_accuracy_vs_shots(summary, paths["shots_plot"])
    plot_accuracy_vs_cost(summary, paths["cost_plot"])
    plots = {"Accuracy against shots": paths["shots_plot"],
             "Accuracy against cost (Pareto front marked)": paths["cost_plot"]}
    no_match = published_md.split("\n\n", 1)[1] if published_md and comparison is None else None
    page = to_html(summary, plots, comparison or no_match, failures)
    atomic_write_bytes(paths["html"], page.encode())
    return {"files": {k: str(v) for k, v in paths.items()}, "summary": summary.as_dict(), "table": markdown,
            "published": published_md}
