"""Load on `vlkit serve`: requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients, for predict and add.

    python benchmarks/serve_load.py                          # vlkit-mini, fashion-mnist-mini, 8 s per phase
    python benchmarks/serve_load.py --seconds 5 --clients 1,8,32

An upgrade run for the demo data's 10 classes is created in a temp folder and served by
``vlkit --threads 1 serve`` (one torch thread, access log off) in a subprocess. Clients are
asyncio tasks on one ``httpx.AsyncClient`` in this process (so they share the machine's
cores with the server, as a local client would); each sends one 28x28 PNG of the demo
data's train split per request, back to back, for ``--seconds`` after a one-second warm-up.
First, on the fresh run, ``--rounds`` rounds of one train image per class are added and the
held-out accuracy the web page shows (``--heldout``: 20 test images per class) is read after
each round. Then predict phases run, then add phases (each add is a real commit: the cache grows,
alpha/beta are re-chosen by leave-one-out once every class has 3 examples, the new state
is fsync'ed and run.json swapped; adds waiting together share one commit, a group commit:
``commits`` and ``adds_per_commit`` say how many). The server's CPU-seconds per request are recorded too:
other work on a shared machine changes wall times far more than CPU time.
Writes benchmarks/results/serve_load.json.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "serve_load.json"


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU-seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def demo_images(data: str, count: int) -> list[tuple[str, bytes]]:
    """(class name, PNG bytes) of ``count`` train images of ``data``, the classes in turn (the split is sorted by class)."""
    from vlkit.data.resolve import load_data

    train = load_data(data, "train")
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(train.labels):
        by_class.setdefault(label, []).append(i)
    turns = [i for rank in range(max(map(len, by_class.values()))) for ids in by_class.values() if rank < len(ids)
             for i in [ids[rank]]]
    out = []
    for i in turns[:count]:
        buffer = io.BytesIO()
        train.image(i).save(buffer, format="PNG")
        out.append((train.classnames[train.labels[i]], buffer.getvalue()))
    return out


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def commits_so_far(run: Path) -> tuple[int, int]:
    """(adds, commits) in the run's history: the adds of one group commit share one time stamp."""
    history = json.loads((run / "run.json").read_text())["history"]
    return len(history), len({entry["time"] for entry in history})


async def phase(url: str, route: str, clients: int, seconds: float, images: list[tuple[str, bytes]],
                pid: int, run: Path) -> dict:
    """``clients`` loops sending ``route`` requests for ``seconds`` (after 1 s of warm-up); latencies and rates."""
    latencies: list[float] = []
    errors = 0
    counter = [0]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        before = (await http.get("/health")).json()["examples"]

        async def one() -> None:
            label, png = images[counter[0] % len(images)]
            counter[0] += 1
            files = [("files", ("x.png", png, "image/png"))]
            if route == "predict":
                answer = await http.post("/predict", files=files, data={"top_k": "3"})
            else:
                answer = await http.post("/examples", files=files, data={"label": label})
            answer.raise_for_status()

        async def loop(until: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < until:
                start = time.perf_counter()
                try:
                    await one()
                except httpx.HTTPError:
                    errors += 1
                    continue
                if record:
                    latencies.append(time.perf_counter() - start)

        warm_until = time.perf_counter() + 1.0
        await asyncio.gather(*(loop(warm_until, False) for _ in range(clients)))
        adds0, commits0 = commits_so_far(run)
        cpu0, client0, start = server_cpu_seconds(pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(loop(start + seconds, True) for _ in range(clients)))
        elapsed, cpu = time.perf_counter() - start, server_cpu_seconds(pid) - cpu0
        client_cpu = time.process_time() - client0
        after = (await http.get("/health")).json()["examples"]
        adds1, commits1 = commits_so_far(run)
    done = len(latencies)
    commits = commits1 - commits0
    grouped = {"commits": commits, "adds_per_commit": round((adds1 - adds0) / max(commits, 1), 2)}
    return {"route": route, "clients": clients, "requests": done, "seconds": round(elapsed, 2),
            "requests_per_s": round(done / elapsed, 1),
            "p50_ms": round(1000 * percentile(latencies, 0.50), 1) if done else None,
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1) if done else None,
            "server_cpu_ms_per_request": round(1000 * cpu / max(done, 1), 1),
            "client_cpu_ms_per_request": round(1000 * client_cpu / max(done, 1), 1), "errors": errors,
            "cache_before": before, "cache_after": after, **(grouped if route == "add" else {})}


def heldout_curve(url: str, images: list[tuple[str, bytes]], rounds: int) -> dict[str, float]:
    """The page's promise in numbers: held-out top-1 (%) after each round of one added image per class."""
    curve = {"0": httpx.get(f"{url}/heldout", timeout=60).json()["top1"]}
    by_class: dict[str, list[bytes]] = {}
    for label, png in images:
        by_class.setdefault(label, []).append(png)
    with httpx.Client(base_url=url, timeout=120) as http:
        for k in range(rounds):
            for label, pngs in by_class.items():
                http.post("/examples", files=[("files", ("x.png", pngs[k], "image/png"))],
                          data={"label": label}).raise_for_status()
            curve[str(k + 1)] = http.get("/heldout").json()["top1"]
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vlkit-mini")
    parser.add_argument("--data", default="fashion-mnist-mini")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--rounds", type=int, default=8, help="rounds of one added image per class for the "
                        "held-out curve (before the load phases)")
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--baseline", type=Path, default=None, help="a result file of this script from another "
                        "checkout (e.g. before group commits), run just before on the same machine: its add rows "
                        "are recorded beside these, with the ratios")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from vlkit.apps import upgrade
    from vlkit.data.resolve import load_data

    clients = [int(c) for c in args.clients.split(",")]
    images = demo_images(args.data, 500)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        run = Path(tmp) / "run"
        upgrade.init_run(run, args.model, load_data(args.data, "train").classnames)
        url = f"http://127.0.0.1:{args.port}"
        command = [sys.executable, "-c", "from vlkit.cli.main import main; main()", "--threads", "1", "serve",
                   str(run), "--port", str(args.port), "--no-access-log", "--heldout", args.data]
        # the server's output goes to a file: a pipe nobody reads fills up (64 KB of progress bars on a busy
        # machine) and blocks the server mid-request
        log = open(Path(tmp) / "server.log", "wb")
        server = subprocess.Popen(command, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "VLKIT_QUIET": "1"})
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: {(Path(tmp) / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
            curve = heldout_curve(url, images, args.rounds)
            load_before = os.getloadavg()
            rows = [asyncio.run(phase(url, route, c, args.seconds, images, server.pid, run))
                    for route in ("predict", "add") for c in clients]
            load_after = os.getloadavg()
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
    by = {(r["route"], r["clients"]): r for r in rows}
    low, high = clients[0], clients[-1]
    doc = {
        "benchmark": "serve_load",
        "title": f"vlkit serve under load: {args.model}, one 28x28 PNG per request, 1 torch thread",
        "claim": (f"requests/s and p50/p99 latency at {', '.join(map(str, clients))} concurrent clients for "
                  f"POST /predict and POST /examples (issue 20); ratios: requests/s at {high} clients over "
                  f"{low} (above 1: concurrency helps, up to the 2 cores)"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, server: 1 torch thread, clients in the same machine",
        "date": datetime.date.today().isoformat(),
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "seconds_per_phase": args.seconds,
        "rows": rows,
        "heldout_top1_by_examples_per_class": curve,
        "ratios": {f"{route}_rps_{high}_over_{low}": round(by[(route, high)]["requests_per_s"] /
                                                             max(by[(route, low)]["requests_per_s"], 1e-9), 2)
                   for route in ("predict", "add")},
        "notes": ("heldout_top1_by_examples_per_class: what the web page's accuracy line shows, before the load "
                  "phases (keys: examples added per class). Wall-clock numbers on a shared 2-core machine (see load_average); server_cpu_ms_per_request "
                  "barely depends on other work; the clients run in this process and take their share of the "
                  "cores (client_cpu_ms_per_request), so 32 clients measure the machine, not the server alone: "
                  "both sides spend more CPU per request there than at 8. add phases grow the cache (cache_before/after): each add "
                  "re-runs the leave-one-out alpha/beta search over the whole cache and rewrites the state, so "
                  "its cost rises with the cache size; adds that wait together are one group commit (one search, "
                  "one fsync'ed state for all of them: commits, adds_per_commit). Before group commits (one commit "
                  "per add, same machine, load average about 9): add 7.2 / 6.2 / 3.5 req/s at 1 / 8 / 32 clients. "
                  "vlkit-mini v1 weights: re-run when v2 ships."),
    }
    if args.baseline is not None:
        base = json.loads(args.baseline.read_text())
        old = {r["clients"]: r for r in base["rows"] if r["route"] == "add"}
        doc["baseline"] = {"what": "the same script on the code before group commits (one commit per add), run just "
                                   "before this one on this machine", "load_average": base.get("load_average"),
                           "add_rows": [{k: old[c][k] for k in ("clients", "requests_per_s", "p50_ms", "p99_ms",
                                                              "server_cpu_ms_per_request")} for c in sorted(old)]}
        for c in clients:
            if c in old:
                doc["ratios"][f"add_rps_{c}_over_baseline"] = round(by[("add", c)]["requests_per_s"]
                                                                    / max(old[c]["requests_per_s"], 1e-9), 2)
                doc["ratios"][f"add_server_cpu_{c}_over_baseline"] = round(
                    by[("add", c)]["server_cpu_ms_per_request"] / max(old[c]["server_cpu_ms_per_request"], 1e-9), 2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"held-out top-1 by examples per class: {curve}")
    for row in rows:
        print(f"{row['route']:>7} x{row['clients']:>2}: {row['requests_per_s']:6.1f} req/s, p50 {row['p50_ms']} ms, "
              f"p99 {row['p99_ms']} ms, server {row['server_cpu_ms_per_request']} CPU-ms/req, "
              f"cache {row['cache_before']}->{row['cache_after']}, errors {row['errors']}"
              + (f", {row['commits']} commits ({row['adds_per_commit']} adds each)" if "commits" in row else ""))


if __name__ == "__main__":
    main()
