"""``vlkit bench``: every method under one protocol, accuracy and cost together, resumable, with reports."""
from vlkit.protocols.cells import Cell, CellLog, grid
from vlkit.protocols.sources import DataSource, sources_from_specs
from vlkit.protocols.runner import resolve_methods, run_bench
from vlkit.report.summary import Stat, pareto_front

__all__ = ["Cell", "CellLog", "DataSource", "Stat", "grid", "pareto_front", "resolve_methods", "run_bench",
           "sources_from_specs"]
