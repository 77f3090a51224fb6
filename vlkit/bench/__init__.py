"""``vlkit bench``: every method under one protocol, accuracy and cost together, resumable, with reports."""
from vlkit.bench.cells import Cell, CellLog, grid
from vlkit.bench.data import DataSource, sources_from_specs
from vlkit.bench.runner import resolve_methods, run_bench
from vlkit.bench.summary import Stat, pareto_front

__all__ = ["Cell", "CellLog", "DataSource", "Stat", "grid", "pareto_front", "resolve_methods", "run_bench",
           "sources_from_specs"]
