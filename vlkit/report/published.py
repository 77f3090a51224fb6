"""Published numbers kept as data (``published.json``) and their side-by-side view with a bench run.

An entry matches a run when the open_clip model name (ignoring case, '-', '/' and
'_'), the pretrained tag and the protocol agree. Datasets are matched through the
benchmark registry's names and aliases (``oxford_pets`` -> ``OxfordPets``).
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from vlkit.report.tables import Summary
from vlkit.report.summary import AVERAGE


@lru_cache(maxsize=1)
def load_published() -> dict[str, Any]:
    """The parsed ``published.json`` (sources and entries)."""
    return json.loads(resources.files("vlkit.report").joinpath("published.json").read_text(encoding="utf-8"))


def _norm(name: str | None) -> str:
    return "".join(ch for ch in (name or "").lower() if ch.isalnum())


def canonical_dataset(name: str) -> str:
    """The benchmark registry's name for ``name`` (``oxford_pets`` -> ``OxfordPets``), else ``name``."""
    if name == AVERAGE:
        return name
    from vlkit.data.coop_suite import benchmark_info
    from vlkit.errors import DataError

    try:
        return benchmark_info(name.split("/")[0].split("@")[0]).name
    except DataError:
        return name


def matching_entries(model: str, pretrained: str | None, protocol: str) -> list[dict[str, Any]]:
    """Entries published for this model, pretrained tag and protocol."""
    return [e for e in load_published()["entries"]
            if _norm(e["model"]) == _norm(model) and _norm(e["pretrained"]) == _norm(pretrained)
            and e["protocol"] == protocol]


def _published_value(entry: dict[str, Any], data: str, shots: int, metric: str) -> float | None:
    per_data = entry["results"].get(data, {})
    cell = per_data.get(str(shots)) or per_data.get("0")  # zero-shot is published once, at shots "0"
    return None if cell is None else cell.get(metric)


def compare(summary: Summary) -> tuple[list[str], list[list[str]], str] | None:
    """Header, rows (``yours / published`` per dataset) and a note; None when nothing matches."""
    info = summary.info
    entries = matching_entries(info.get("model", ""), info.get("pretrained"), info.get("protocol", "fewshot"))
    if not entries:
        return None
    metric = summary.metric
    names = {d: canonical_dataset(d) for d in summary.panels}
    published_shots = {int(k) for e in entries for per in e["results"].values() for k in per if k != "0"}
    common = sorted(set(summary.shots) & published_shots)
    if not common:
        return None
    shots = 16 if 16 in common else common[-1]
    columns = [d for d in summary.panels if any(_published_value(e, names[d], shots, metric) is not None
                                                 for e in entries)]
    if not columns:
        return None
    sources = load_published()["sources"]
    header = ["method", "source"] + [f"{names[d]} (yours / paper)" for d in columns]
    body = []
    for entry in entries:
        cells = []
        for data in columns:
            paper = _published_value(entry, names[data], shots, metric)
            row = summary.row(data, entry["method"], shots)
            yours = f"{row.metrics[metric].mean:.1f}" if row is not None and metric in row.metrics else "-"
            cells.append("-" if paper is None else f"{yours} / {paper:.1f}")
        if any(c != "-" for c in cells):
            body.append([entry["paper_method"], sources[entry["source"]]["paper"].split(",")[0]] + cells)
    note = (f"{metric} at {shots} shots; backbone {entries[0]['backbone']}; published numbers from "
            + "; ".join(sorted({sources[e['source']]['url'] for e in entries}))
            + ". The published protocol (data splits, templates, selection) may differ from this run's.")
    return header, body, note


def compare_markdown(comparison: tuple[list[str], list[list[str]], str] | None, model: str) -> str:
    """The comparison as a Markdown section (or one line saying there is nothing to compare)."""
    if comparison is None:
        return (f"## Published numbers\n\nNo published numbers match {model} with this protocol and these "
                "datasets (published.json holds CLIP RN50/ViT-B-16/ViT-B-32/RN101 'openai' results on the "
                "11 CoOp benchmarks).")
    header, body, note = comparison
    lines = ["## Published numbers", "", note, "",
             "| " + " | ".join(header) + " |", "|" + "|".join([":---", ":---"] + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)
