"""``vlkit bench`` end to end: kill it midway (SIGKILL), resume it, re-run it; time each phase.

    python benchmarks/bench_resume.py --model vlkit-mini --data fashion-mnist,digits-mnist \\
        --methods all --shots 1,4,16 --seeds 1,2 --kill-after 6

Phase 1 runs the bench in a subprocess and kills its process group once ``--kill-after``
cells are stored; phase 2 re-runs it to the end (it must run only the missing cells);
phase 3 re-runs it again (it must run none). Writes benchmarks/results/bench_resume.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_argv() -> list[str]:
    """``vlkit bench`` as a subprocess (the CLI's own entry module)."""
    return [sys.executable, "-m", "vlkit.cli.main", "bench"]


def lines(path: Path) -> int:
    """Complete lines in the cell log."""
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def run(argv: list[str], kill_after: int | None, log: Path) -> tuple[float, dict | None, int]:
    """Run the bench; kill it after ``kill_after`` stored cells. Returns (seconds, its JSON, cells stored)."""
    output = log.parent / f"result-{time.time_ns()}.json"
    start = time.perf_counter()
    env = {**os.environ, "VLKIT_QUIET": "1"}
    proc = subprocess.Popen(argv + ["--output", str(output)], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if kill_after is not None and lines(log) >= kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.perf_counter() - start, None, lines(log)
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"bench failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    return seconds, json.loads(output.read_text()), lines(log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vlkit-mini")
    parser.add_argument("--data", default="fashion-mnist-mini")
    parser.add_argument("--methods", default="zero-shot,linear-probe")
    parser.add_argument("--shots", default="1,4,16")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--kill-after", type=int, default=3, help="cells stored before the SIGKILL (0: no kill)")
    parser.add_argument("--test-per-class", type=int, default=None, help="passed on to vlkit bench")
    parser.add_argument("--out", type=Path, default=None, help="bench folder (default: a temp folder)")
    parser.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "bench_resume.json")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="vlkit-bench-"))
    argv = bench_argv() + ["--model", args.model, "--data", args.data, "--methods", args.methods,
                           "--shots", args.shots, "--seeds", args.seeds, "--out", str(out)]
    if args.test_per_class:
        argv += ["--test-per-class", str(args.test_per_class)]
    log = out / "cells.jsonl"
    killed_s, stored = 0.0, 0
    if args.kill_after:
        killed_s, _, stored = run(argv, args.kill_after, log)
        print(f"phase 1: killed after {killed_s:.0f}s with {stored} cells stored", flush=True)
    resume_s, resumed, _ = run(argv, None, log)
    print(f"phase 2: {resumed['ran']} cells run, {resumed['skipped']} skipped in {resume_s:.0f}s", flush=True)
    rerun_s, rerun, _ = run(argv, None, log)
    print(f"phase 3: {rerun['ran']} cells run in {rerun_s:.1f}s", flush=True)
    total = resumed["cells"]
    from vlkit.protocols.runner import machine_info

    result = {
        "benchmark": "bench_resume", "command": shlex.join(["python", *sys.argv]), "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
        "claim": "killed midway, the re-run completes only the missing cells; a finished bench re-runs nothing",
        "bench_command": " ".join(argv[argv.index("--model"):]), "cells": total, "stored_at_kill": stored,
        "resumed_ran": resumed["ran"], "resumed_skipped": resumed["skipped"], "failed": len(resumed["failed"]),
        "rerun_ran": rerun["ran"], "killed_phase_seconds": killed_s, "resume_phase_seconds": resume_s,
        "rerun_seconds": rerun_s, "full_bench_seconds": killed_s + resume_s,
        "ratios": {"resumed_ran_over_missing": resumed["ran"] / max(total - stored, 1),
                   "rerun_over_full_bench": rerun_s / max(killed_s + resume_s, 1e-9)},
        "reports": resumed.get("files", {}),
    }
    ok = resumed["ran"] + len(resumed["failed"]) == total - stored and rerun["ran"] == 0
    result["verdict"] = "ok" if ok else "FAILED: re-run did other work than the missing cells"
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=1))
    print(f"{result['verdict']}; wrote {args.result}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
