"""``vlkit bench``: thin over :func:`vlkit.protocols.run_bench` (parse, call, print)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlkit.cli.common import DeviceOpt, EngineOpt, JobsOpt, ModelOpt, OutputOpt, PretrainedOpt, RayAddressOpt, \
    ValOpt, ValPerClassOpt, WorkersOpt, err, out, parse_jobs, parse_list, user_errors, write_json


@user_errors
def bench_command(
    data: str = typer.Option("fashion-mnist-mini", "--data", "-d",
                             help="comma-separated: offline names, image folders, WebDataset shards (.tar, a "
                                  "{000000..000009}.tar pattern, a folder of .tar), NAME@COOP_ROOT, or coop@COOP_ROOT "
                                  "(all 11 CoOp benchmarks found there)"),
    methods: str = typer.Option("all", "--methods", help="all, a,b,c, or all,-a (every method but a)"),
    shots: str = typer.Option("1,2,4,8,16", "--shots", help="comma-separated shot counts"),
    seeds: str = typer.Option("1,2,3", "--seeds", help="comma-separated seeds"),
    out_dir: Path = typer.Option(Path("runs/bench"), "--out", help="folder for cells.jsonl and the reports; "
                                 "re-running with the same folder resumes"),
    protocol: str = typer.Option("fewshot", "--protocol", help="fewshot or base2novel"),
    compare_published: bool = typer.Option(False, "--compare-published",
                                           help="show published numbers beside yours when model and protocol match"),
    views: Optional[int] = typer.Option(None, "--views", help="cached augmented views per training image (default 10)"),
    schedule: str = typer.Option("quick", "--schedule", help="quick: short schedules for the tuners that run "
                                 "an encoder tower each step (as vlkit fewshot); paper: every method's own"),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="stop at the first failing cell"),
    test_per_class: Optional[int] = typer.Option(None, "--test-per-class",
                                                 help="score on the first N test images of each class (a budget "
                                                      "run; the datasets are then named NAME:testN)"),
    val: str = ValOpt, val_per_class: int = ValPerClassOpt, jobs: str = JobsOpt,
    model: str = ModelOpt, pretrained: Optional[str] = PretrainedOpt, device: Optional[str] = DeviceOpt,
    engine: str = EngineOpt, ray_address: Optional[str] = RayAddressOpt, workers: Optional[int] = WorkersOpt,
    output: Optional[Path] = OutputOpt,
) -> None:
    """Every method x shots x seed on each dataset, accuracy and cost, resumable; Markdown, PNG and HTML reports."""
    from vlkit.apps.commands import feature_store
    from vlkit.protocols import run_bench

    store = feature_store(engine, ray_address, workers)
    result = run_bench(model, pretrained, parse_list(data, option="--data"), methods,
                       parse_list(shots, int, "--shots"), parse_list(seeds, int, "--seeds"),
                       out_dir, protocol, compare_published, device, views, fail_fast=fail_fast, schedule=schedule,
                       test_per_class=test_per_class, val=val, val_per_class=val_per_class, jobs=parse_jobs(jobs),
                       store=store)
    out.print(result["table"], markup=False, highlight=False, soft_wrap=True)
    err.print(f"{result['ran']} cells run, {result['skipped']} already done, {len(result['failed'])} failed "
              f"in {result['seconds']:.0f}s; reports in {result['out']}")
    for failure in result["failed"]:
        err.print(f"[red]failed:[/red] {failure['cell']}: {failure['error']}", highlight=False, soft_wrap=True)
    write_json(output, {k: v for k, v in result.items() if k not in ("table", "records")})
    if result["failed"]:
        raise typer.Exit(1)
