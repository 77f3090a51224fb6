"""The bench summary and its Markdown form: accuracy mean ± std per method and shots, then cost."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from vlkit.report.summary import AVERAGE, Row, average_rows, pareto_front, summarize

METRIC_LABELS = {"top1": "top-1 accuracy (%)", "mean_per_class": "mean per-class accuracy (%)",
                 "base": "base-class accuracy (%)", "novel": "novel-class accuracy (%)",
                 "hm": "harmonic mean of base and novel (%)"}


@dataclass
class Summary:
    """Everything the report writers need, in the run's order of datasets, methods and shots."""

    rows: list[Row]
    datasets: list[str]
    methods: list[str]
    shots: list[int]
    seeds: list[int]
    metrics: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """The main metric (plots and Pareto front)."""
        return self.metrics[-1] if "hm" in self.metrics else self.metrics[0]

    @property
    def panels(self) -> list[str]:
        """Datasets to show, the average first when there are several."""
        return ([AVERAGE] if len(self.datasets) > 1 else []) + list(self.datasets)

    def row(self, data: str, method: str, shots: int) -> Row | None:
        """The row of one (dataset, method, shots), if measured."""
        return self._index.get((data, method, shots))

    def __post_init__(self) -> None:
        self._index = {(r.data, r.method, r.shots): r for r in self.rows}

    def cost_points(self, cost_key: str, data: str | None = None, shots: int | None = None
                    ) -> list[tuple[str, float, float]]:
        """(method, cost, accuracy) at ``shots`` (default: the most) on ``data`` (default: first panel)."""
        data = data or self.panels[0]
        shots = shots or max(self.shots)
        points = []
        for method in self.methods:
            row = self.row(data, method, shots)
            if row is not None and self.metric in row.metrics and cost_key in row.cost:
                points.append((method, row.cost[cost_key], row.metrics[self.metric].mean))
        return points

    def front(self, cost_key: str, data: str | None = None, shots: int | None = None) -> list[str]:
        """Methods on the Pareto front of accuracy against ``cost_key``, cheapest first."""
        points = self.cost_points(cost_key, data, shots)
        return [points[i][0] for i in pareto_front([(c, a) for _, c, a in points])]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (written as ``summary.json``)."""
        fronts = {k: self.front(k) for k in ("trainable_parameters", "fit_seconds")}
        return {"info": self.info, "datasets": self.datasets, "methods": self.methods, "shots": self.shots,
                "seeds": self.seeds, "metrics": self.metrics, "pareto_front": fronts,
                "rows": [r.as_dict() for r in self.rows]}


def build_summary(records: Sequence[dict[str, Any]], datasets: Sequence[str], methods: Sequence[str],
                  shots: Sequence[int], seeds: Sequence[int], metrics: Sequence[str],
                  info: dict[str, Any] | None = None) -> Summary:
    """Summary of ``records`` (already limited to the run's grid), average over datasets added."""
    rows = summarize(records, metrics)
    if len(datasets) > 1:
        rows += average_rows(rows, list(datasets))
    present = {r.method for r in rows}
    return Summary(rows, list(datasets), [m for m in methods if m in present], list(shots), list(seeds),
                   list(metrics), dict(info or {}))


def shots_text(k: int) -> str:
    """'1 shot', '4 shots'."""
    return f"{k} shot{'s' if k != 1 else ''}"


# ---- Markdown ----------------------------------------------------------------------------------
def _table(header: Sequence[str], body: Sequence[Sequence[str]], align: str = "l") -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:" if align == "r" else ":---"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def accuracy_table(summary: Summary, data: str, metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows (method x shots, ``mean ± std``) of one dataset and metric."""
    header = ["method"] + [shots_text(k) for k in summary.shots]
    body = []
    for method in summary.methods:
        cells = []
        for k in summary.shots:
            row = summary.row(data, method, k)
            cells.append(row.metrics[metric].text() if row and metric in row.metrics else "-")
        if any(c != "-" for c in cells):
            body.append([method] + cells)
    return header, body


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cost_table(summary: Summary, data: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the cost of each method at the largest shot count on ``data``."""
    k = max(summary.shots)
    fronts = {key: set(summary.front(key, data, k)) for key in ("trainable_parameters", "fit_seconds")}
    header = ["method", "trainable params", "artifact", "fit (s)", "peak memory", "train memory / image",
              "latency (ms/img)", "Pareto"]
    body = []
    for method in summary.methods:
        row = summary.row(data, method, k)
        if row is None:
            continue
        c = row.cost
        marks = [name for key, name in (("trainable_parameters", "params"), ("fit_seconds", "time"))
                 if method in fronts[key]]
        body.append([method,
                     f"{c['trainable_parameters']:,.0f}" if "trainable_parameters" in c else "-",
                     human_bytes(c["artifact_bytes"]) if "artifact_bytes" in c else "-",
                     f"{c['fit_seconds']:.2f}" if "fit_seconds" in c else "-",
                     human_bytes(c["peak_memory_bytes"]) if "peak_memory_bytes" in c else "-",
                     human_bytes(c["train_memory_per_image_bytes"]) if "train_memory_per_image_bytes" in c else "-",
                     f"{c['latency_ms_per_image']:.2f}" if "latency_ms_per_image" in c else "-",
                     ", ".join(marks) or "-"])
    return header, body


def to_markdown(summary: Summary, published: str | None = None) -> str:
    """The whole Markdown report: run line, accuracy tables per dataset and metric, cost tables."""
    info = summary.info
    seeds = ", ".join(map(str, summary.seeds))
    lines = [f"# vlkit bench: {info.get('model', '?')}"
             + (f" ({info['pretrained']})" if info.get("pretrained") else ""),
             "",
             f"Protocol {info.get('protocol', 'fewshot')}; mean ± sample std over seeds {seeds}; "
             f"cost at {shots_text(max(summary.shots))}, mean over seeds. "
             "Pareto: on the front of accuracy against trainable parameters (params) or fit time (time).",
             ""] + ([f"Schedule: {info['schedule']}.", ""] if info.get("schedule") else [])
    for data in summary.panels:
        title = "Average over " + ", ".join(summary.datasets) if data == AVERAGE else data
        lines += [f"## {title}", ""]
        for metric in summary.metrics:
            header, body = accuracy_table(summary, data, metric)
            lines += [f"{METRIC_LABELS.get(metric, metric)}", "", _table(header, body, "r"), ""]
        header, body = cost_table(summary, data)
        lines += [f"cost at {shots_text(max(summary.shots))}", "", _table(header, body, "r"), ""]
    if published:
        lines += [published, ""]
    return "\n".join(lines)
