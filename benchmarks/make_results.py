"""Regenerate benchmarks/RESULTS.md from the JSON files the benchmark scripts write.

Convention (every script in benchmarks/ follows it):

- A benchmark script ``benchmarks/<name>.py`` writes ``benchmarks/results/<name>.json``,
  one JSON object, replacing the previous file (re-run the script to refresh it).
- Required keys: ``benchmark`` (the name), ``command`` (the exact command line that
  produced the file), ``machine`` (CPU/GPU, threads: enough to judge the numbers).
- Ratios: a ``ratios`` object ``{"name": value}`` and/or top-level numbers whose key
  contains ``_over_`` (``miss_over_plain``: miss time divided by plain time). These are
  the headline numbers of the benchmark.
- Optional: ``title`` (one line), ``claim`` (what the ratios show, with the target),
  ``date`` (ISO), ``notes``. Every other scalar value is listed as a measurement; a
  list of objects (``rows``: one per configuration) becomes its own table; other
  nested values are shown as JSON.

Run ``python benchmarks/make_results.py`` after any benchmark; ``--check`` exits 1 when
RESULTS.md is out of date (for CI) without writing it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
OUTPUT = HERE / "RESULTS.md"
REQUIRED = ("benchmark", "command", "machine")
RESERVED = {"benchmark", "command", "machine", "ratios", "title", "claim", "date", "notes"}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        size = abs(value)
        return (f"{value:,.0f}" if size >= 1000 else f"{value:.1f}" if size >= 10 else f"{value:.4f}"
                if size >= 0.01 or value == 0 else f"{value:.3g}")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value, separators=(",", ":")) + "`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, spaces to '-', other punctuation dropped."""
    return "".join(ch for ch in title.lower().replace(" ", "-") if ch.isalnum() or ch in "-_")


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    """The headline ratios: the ``ratios`` object plus top-level numbers named ``*_over_*``."""
    found = dict(doc.get("ratios", {}))
    found.update({k: v for k, v in doc.items() if "_over_" in k and isinstance(v, (int, float))})
    return found


def load(folder: Path = RESULTS_DIR) -> tuple[list[dict[str, Any]], list[str]]:
    """Every result file (sorted by name) and the problems found in them."""
    docs, problems = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"{path.name}: not readable JSON ({exc})")
            continue
        missing = [k for k in REQUIRED if k not in doc]
        if missing:
            problems.append(f"{path.name}: missing {', '.join(missing)}")
        docs.append({**doc, "_file": path.name})
    return docs, problems


def _title(doc: dict[str, Any], names: list[str]) -> str:
    """The section heading: the benchmark name, with the file's name when two files share it."""
    name = str(doc.get("benchmark", doc["_file"]))
    return name if names.count(name) == 1 else f"{name} ({doc['_file']})"


def section(doc: dict[str, Any], title: str) -> list[str]:
    """One benchmark's Markdown section."""
    lines = [f"## {title}", ""]
    if doc.get("title"):
        lines += [str(doc["title"]), ""]
    if doc.get("claim"):
        lines += [f"**Claim:** {doc['claim']}", ""]
    date = f"; date: {doc['date']}" if doc.get("date") else ""
    lines += ["```", str(doc.get("command", "(command not recorded)")), "```", "",
              f"Machine: {doc.get('machine', '(not recorded)')}{date}", ""]
    heads = ratios(doc)
    if heads:
        lines += ["| ratio | value |", "|:---|---:|"] + [f"| {k} | {_fmt(v)} |" for k, v in heads.items()] + [""]
    rest = {k: v for k, v in doc.items() if k not in RESERVED and k not in heads and not k.startswith("_")}
    tables = {k: v for k, v in rest.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)}
    scalars = {k: v for k, v in rest.items() if k not in tables}
    if scalars:
        lines += ["| measurement | value |", "|:---|---:|"] + [f"| {k} | {_fmt(v)} |" for k, v in scalars.items()]
        lines.append("")
    for key, rows in tables.items():
        columns = list(dict.fromkeys(c for row in rows for c in row))
        lines += [f"{key}:", "", "| " + " | ".join(columns) + " |", "|" + "|".join(["---"] * len(columns)) + "|"]
        lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows] + [""]
    if doc.get("notes"):
        lines += [str(doc["notes"]), ""]
    lines += [f"Source: `benchmarks/results/{doc['_file']}`", ""]
    return lines


def render(docs: list[dict[str, Any]], problems: list[str]) -> str:
    """The whole RESULTS.md."""
    lines = ["# Benchmark results", "",
             "Generated by `python benchmarks/make_results.py` from `benchmarks/results/*.json`; do not edit by "
             "hand. Each section names the command that produced it and the machine it ran on.", ""]
    names = [str(doc.get("benchmark", doc["_file"])) for doc in docs]
    titles = [_title(doc, names) for doc in docs]
    if docs:
        lines += ["| benchmark | headline ratios | machine |", "|:---|:---|:---|"]
        for doc, title in zip(docs, titles):
            heads = ", ".join(f"{k} = {_fmt(v)}" for k, v in ratios(doc).items()) or "-"
            lines.append(f"| [{title}](#{_anchor(title)}) | {heads} | {_fmt(doc.get('machine', '-'))} |")
        lines.append("")
    else:
        lines += ["No results yet: run a script in `benchmarks/`.", ""]
    for doc, title in zip(docs, titles):
        lines += section(doc, title)
    if problems:
        lines += ["## Problems in the result files", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate benchmarks/RESULTS.md from benchmarks/results/*.json")
    parser.add_argument("--check", action="store_true", help="exit 1 if RESULTS.md is stale; write nothing")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=OUTPUT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    text = render(*load(args.results))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current != text:
            sys.stderr.write(f"{args.output} is out of date: run python benchmarks/make_results.py\n")
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    sys.stderr.write(f"wrote {args.output} ({len(text.splitlines())} lines)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
