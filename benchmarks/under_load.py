"""The main job alone and under a competing CPU load, with the old and the new thread wait policy.

    python benchmarks/under_load.py                                # a reduced job (see --methods)
    python benchmarks/under_load.py --methods all --shots 1,4,16   # the full `vlkit fewshot` defaults

Each configuration runs ``run_fewshot_job`` (what ``vlkit fewshot`` runs) in a fresh
process with a fresh ``--out`` folder over a warm feature cache (a warm-up run encodes the
images first, so every measured run does the same training and scoring work), and records
its wall time and its CPU-seconds (user + system, from ``wait4``). "old" is the libraries'
default wait policy (``OMP_WAIT_POLICY`` unset: idle OpenMP threads spin before they
sleep); "new" is what the CLI sets (``OMP_WAIT_POLICY=PASSIVE``); "new-1thread" adds
``vlkit --threads 1``. "loaded" runs ``--busy`` busy-loop processes beside the job. The
load average before each run is recorded: on a shared machine "alone" is only as alone
as the machine is. Writes benchmarks/results/under_load.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "under_load.json"
JOB = ("import sys, json; from pathlib import Path; from vlkit.protocols.presets import run_fewshot_job; "
       "a = json.loads(sys.argv[1]); "
       "run_fewshot_job(a['model'], None, a['data'], a['methods'], a['shots'], [1], Path(a['out']), device='cpu')")
POLICIES = {  # name -> environment changes over a clean one
    "old": {},
    "new": {"OMP_WAIT_POLICY": "PASSIVE"},
    "new-1thread": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                      "OPENBLAS_NUM_THREADS": "1"},
}


def busy_loop() -> None:
    """A competing process: one core's worth of pure-Python work."""
    while True:
        pass


def run_job(job: dict, policy: dict[str, str], out: Path) -> dict[str, float]:
    """One job in a fresh process; its wall seconds, CPU-seconds and the load average before it."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS",
                                                           "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env.update(policy, VLKIT_QUIET="1")
    load = os.getloadavg()[0]
    start = time.perf_counter()
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", JOB, json.dumps({**job, "out": str(out)})], env)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"the job failed with {os.waitstatus_to_exitcode(status)} under {policy}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "load_before": load}


def measure(job: dict, busy: int, policies: list[str], work: Path) -> dict[str, dict]:
    """Every policy alone, then every policy beside ``busy`` busy loops."""
    runs: dict[str, dict] = {}
    for loaded in (False, True):
        workers = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(busy if loaded else 0)]
        for worker in workers:
            worker.start()
        try:
            for name in policies:
                label = f"{name}, {'loaded' if loaded else 'alone'}"
                runs[label] = run_job(job, POLICIES[name], work / label.replace(", ", "-").replace(" ", "_"))
                print(label, runs[label], file=sys.stderr, flush=True)
        finally:
            for worker in workers:
                worker.terminate()
                worker.join()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vlkit-mini")
    parser.add_argument("--data", default="fashion-mnist-mini")
    parser.add_argument("--methods", default="clip-adapter,tip-adapter-f",
                        help="comma-separated, or all (the main job's methods; minutes per run)")
    parser.add_argument("--shots", default="4")
    parser.add_argument("--busy", type=int, default=2, help="competing busy-loop processes")
    parser.add_argument("--policies", default="old,new,new-1thread", help="comma-separated: old, new, new-1thread")
    args = parser.parse_args()
    policies = args.policies.split(",")
    job = {"model": args.model, "data": args.data, "shots": [int(k) for k in args.shots.split(",")],
           "methods": None if args.methods == "all" else args.methods.split(",")}
    with tempfile.TemporaryDirectory(prefix="vlkit-under-load-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("VLKIT_CACHE", str(work / "cache"))
        warm = run_job(job, POLICIES["new"], work / "warm-up")  # encodes the images once
        runs = measure(job, args.busy, policies, work)
    ratios = {}
    for name in policies:
        alone, loaded = runs[f"{name}, alone"], runs[f"{name}, loaded"]
        key = name.replace("-", "_")
        ratios[f"{key}_loaded_over_alone_cpu"] = round(loaded["cpu_s"] / alone["cpu_s"], 2)
        ratios[f"{key}_loaded_over_alone_wall"] = round(loaded["wall_s"] / alone["wall_s"], 2)
    if "old" in policies and "new" in policies:
        for where in ("alone", "loaded"):
            for what in ("cpu", "wall"):
                ratios[f"old_over_new_{where}_{what}"] = round(runs[f"old, {where}"][f"{what}_s"]
                                                               / runs[f"new, {where}"][f"{what}_s"], 2)
    result = {
        "benchmark": "under_load",
        "title": "the main job alone and beside busy loops, old (spinning) vs new (passive) OpenMP wait policy",
        "claim": "under load the passive policy keeps CPU-seconds near the job's own (loaded_over_alone_cpu near 1) "
                 "where spinning threads multiply them (issue 21: 167 vs 1,597 CPU-seconds)",
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
        "job": job, "busy_loops": args.busy, "warm_up": warm, "runs": runs, "ratios": ratios,
        "notes": "load_before is the 1-minute load average when each run started, the busy loops included; "
                 "other work on the machine adds to it",
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
