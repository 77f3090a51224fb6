"""The one-page HTML report: run facts, accuracy and cost tables, plots embedded as base64 PNG."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

from vlkit.report.tables import METRIC_LABELS, Summary, accuracy_table, cost_table, shots_text
from vlkit.report.summary import AVERAGE

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.meta{color:#555;font-size:13px}
.fail{color:#a00}
"""


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def to_html(summary: Summary, plots: dict[str, Path],
            published: tuple[list[str], list[list[str]], str] | str | None = None,
            failures: Sequence[dict[str, Any]] = ()) -> str:
    """The report page; ``plots`` maps a caption to a PNG file, embedded inline (one self-contained file).

    ``published`` is the comparison table (header, rows, note), or a sentence saying
    that nothing matched, or None when no comparison was asked for.
    """
    info = summary.info
    title = f"vlkit bench: {info.get('model', '')}" + (f" ({info['pretrained']})" if info.get("pretrained") else "")
    facts = [("protocol", info.get("protocol", "fewshot")), ("datasets", ", ".join(summary.datasets)),
             ("methods", ", ".join(summary.methods)), ("shots", ", ".join(map(str, summary.shots))),
             ("seeds", ", ".join(map(str, summary.seeds))), ("schedule", str(info.get("schedule", ""))),
             ("device", str(info.get("device", ""))),
             ("machine", str(info.get("machine", ""))), ("generated", str(info.get("generated", "")))]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             "<p class='meta'>" + "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in facts if v)
             + "</p>",
             "<p>Accuracy is the mean ± sample standard deviation over seeds. Hyper-parameters and epochs were "
             "chosen on the validation split only; the test split was read once per cell.</p>"]
    for caption, path in plots.items():
        parts += [f"<h2>{html.escape(caption)}</h2>", _image(path, caption)]
    for data in summary.panels:
        parts.append(f"<h2>{html.escape('Average over datasets' if data == AVERAGE else data)}</h2>")
        for metric in summary.metrics:
            parts.append(f"<h3>{html.escape(METRIC_LABELS.get(metric, metric))}</h3>")
            parts.append(_table(*accuracy_table(summary, data, metric)))
        parts.append(f"<h3>cost at {shots_text(max(summary.shots))}</h3>")
        parts.append(_table(*cost_table(summary, data)))
    if isinstance(published, str):
        parts += ["<h2>Published numbers</h2>", f"<p class='meta'>{html.escape(published)}</p>"]
    elif published is not None:
        header, body, note = published
        parts += ["<h2>Published numbers</h2>", f"<p class='meta'>{html.escape(note)}</p>", _table(header, body)]
    if failures:
        parts.append("<h2 class='fail'>Failed cells (retried on the next run)</h2>")
        parts.append(_table(["cell", "error"], [[f["cell"], f["error"]] for f in failures]))
    parts.append("</body></html>")
    return "\n".join(parts)
