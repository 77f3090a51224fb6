"""Aggregate cell records: mean and sample std over seeds, averages over datasets, the Pareto front."""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

AVERAGE = "average"
COST_KEYS = ("trainable_parameters", "artifact_bytes", "fit_seconds", "peak_memory_bytes", "train_memory_bytes",
             "train_memory_per_image_bytes", "latency_ms_per_image")


@dataclass
class Stat:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of per-seed values."""

    values: list[float]
    seeds: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        """How many seeds."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Arithmetic mean."""
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0.0 when there is a single seed)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def text(self, digits: int = 1) -> str:
        """``"71.3 ± 0.4"`` (no ``±`` part with one seed; ``-`` with none)."""
        if not self.values:
            return "-"
        return f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.n > 1 else "")


@dataclass
class Row:
    """One (dataset, method, shots) entry: accuracy stats per metric and mean cost."""

    data: str
    method: str
    shots: int
    metrics: dict[str, Stat]
    cost: dict[str, float]
    family: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"data": self.data, "method": self.method, "shots": self.shots, "family": self.family,
                "metrics": {k: {"mean": s.mean, "std": s.std, "n": s.n, "values": s.values, "seeds": s.seeds}
                            for k, s in self.metrics.items()},
                "cost": self.cost}


def summarize(records: Iterable[dict[str, Any]], metrics: Sequence[str] = ("top1",)) -> list[Row]:
    """Group records by (data, method, shots); mean ± std of each metric over seeds, mean cost."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        cell = record["cell"]
        groups[(cell["data"], cell["method"], int(cell["shots"]))].append(record)
    rows = []
    for (data, method, shots), group in groups.items():
        group = sorted(group, key=lambda r: r["cell"]["seed"])
        seeds = [int(r["cell"]["seed"]) for r in group]
        stats = {m: Stat([float(r["result"][m]) for r in group], seeds) for m in metrics
                 if all(m in r["result"] for r in group)}
        cost = {k: statistics.fmean(float(r["result"][k]) for r in group) for k in COST_KEYS
                if all(r["result"].get(k) is not None for r in group)}
        rows.append(Row(data, method, shots, stats, cost, str(group[0]["result"].get("family", ""))))
    return rows


def average_rows(rows: Sequence[Row], datasets: Sequence[str]) -> list[Row]:
    """Rows for the average over ``datasets``: per seed, the mean over datasets; then mean ± std.

    A (method, shots) gets an average only when every dataset has it, and only over
    the seeds that every dataset has (as the papers' "Average" column).
    """
    by_key: dict[tuple[str, int], dict[str, Row]] = defaultdict(dict)
    for row in rows:
        by_key[(row.method, row.shots)][row.data] = row
    out = []
    for (method, shots), per_data in by_key.items():
        if any(d not in per_data for d in datasets):
            continue
        first = per_data[datasets[0]]
        stats = {}
        for metric in first.metrics:
            if not all(metric in per_data[d].metrics for d in datasets):
                continue
            seed_maps = [dict(zip(per_data[d].metrics[metric].seeds, per_data[d].metrics[metric].values))
                         for d in datasets]
            seeds = sorted(set.intersection(*(set(m) for m in seed_maps)))
            stats[metric] = Stat([statistics.fmean(m[s] for m in seed_maps) for s in seeds], seeds)
        cost = {k: statistics.fmean(per_data[d].cost[k] for d in datasets) for k in first.cost
                if all(k in per_data[d].cost for d in datasets)}
        out.append(Row(AVERAGE, method, shots, stats, cost, first.family))
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when lower cost (x) and higher accuracy (y) are better.

    A point is dominated when another has cost <= and accuracy >= with one strictly
    better. Equal points are all kept. The result is sorted by cost, then accuracy.
    """
    front = []
    for i, (ci, ai) in enumerate(points):
        dominated = any(cj <= ci and aj >= ai and (cj < ci or aj > ai)
                        for j, (cj, aj) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))
