"""Start-up time of `vlkit --help` and `vlkit methods`, this checkout against an older one.

    python benchmarks/startup.py                   # old = the commit before the lazy imports (8b1b51c)
    python benchmarks/startup.py --old-rev REV --repeat 5

The old revision is checked out into a temporary git worktree and installed (``--no-deps``,
editable) into a temporary venv that sees this interpreter's packages, so both sides run
on the same libraries. Each command runs ``--repeat`` times in a fresh process; the file
records the minimum (the least disturbed by other work) and the median wall time, the
load average, and which heavy libraries each side imported. Target (issue 21): under 1.5 s
on 2 cores. Writes benchmarks/results/startup.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "startup.json"
COMMANDS = {"help": ["--help"], "methods": ["methods"]}
HEAVY = ["torch", "open_clip", "faiss", "sklearn", "matplotlib"]
PROBE = ("import sys, runpy\nsys.argv = ['vlkit'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('vlkit.cli.main', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         f"sys.stderr.write('HEAVY ' + ','.join(n for n in {HEAVY!r} if n in sys.modules) + '\\n')\n")


def old_python(rev: str, tmp: Path) -> str:
    """A python whose ``vlkit`` is revision ``rev`` (a worktree + a venv over this interpreter's packages)."""
    tree, venv = tmp / "old", tmp / "venv"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    outer = [p for p in sys.path if p.endswith("site-packages")]  # this interpreter's packages, .pth ones too
    Path(site, "_outer.pth").write_text("\n".join(outer) + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(tree)],
                   check=True, cwd=tmp)
    return python


def time_command(python: str, args: list[str], repeat: int, cwd: Path) -> dict:
    """Wall seconds of ``python -m vlkit.cli.main ARGS`` in fresh processes, and the heavy modules it loaded."""
    walls, cpus, heavy = [], [], ""
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run([python, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd,
                              env={**os.environ, "VLKIT_QUIET": "1"})
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        heavy = [line for line in done.stderr.splitlines() if line.startswith("HEAVY ")][-1][6:]
    return {"min_s": round(min(walls), 3), "median_s": round(statistics.median(walls), 3),
            "cpu_min_s": round(min(cpus), 3),
            "heavy_imports": heavy.split(",") if heavy else []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-rev", default="8b1b51c")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vlkit-startup-") as tmp_name:
        tmp = Path(tmp_name)
        load_before = os.getloadavg()[0]
        pythons = {"new": sys.executable}
        try:
            pythons["old"] = old_python(args.old_rev, tmp)
            timings = {side: {name: time_command(python, argv, args.repeat, tmp) for name, argv in COMMANDS.items()}
                       for side, python in pythons.items()}
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "old")],
                           capture_output=True)
    ratios = {f"old_over_new_{name}": round(timings["old"][name]["min_s"] / timings["new"][name]["min_s"], 1)
              for name in COMMANDS}
    ratios.update({f"old_over_new_{name}_cpu": round(timings["old"][name]["cpu_min_s"]
                                                     / timings["new"][name]["cpu_min_s"], 1) for name in COMMANDS})
    result = {
        "benchmark": "startup",
        "title": "start-up of `vlkit --help` and `vlkit methods`: this checkout vs " + args.old_rev,
        "claim": "both under 1.5 s on 2 cores (issue 21, item 8); old_over_new = how many times faster",
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "repeat": args.repeat, "old_rev": args.old_rev,
        "new_help_s": timings["new"]["help"]["min_s"], "new_methods_s": timings["new"]["methods"]["min_s"],
        "timings": timings, "ratios": ratios,
        "new_help_cpu_s": timings["new"]["help"]["cpu_min_s"], "new_methods_cpu_s": timings["new"]["methods"]["cpu_min_s"],
        "notes": "min_s: fastest of the repeats (least disturbed by other work on a shared machine); cpu_min_s: "
                 "user + system CPU-seconds of the process, which other work on the machine barely changes",
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["ratios"]), json.dumps({side: {k: v["min_s"] for k, v in t.items()}
                                                    for side, t in timings.items()}))


if __name__ == "__main__":
    main()
