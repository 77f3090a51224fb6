"""``vlkit``: the command line. Each command parses, calls one library function, prints."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vlkit.cli.common import (DATA_HELP, DeviceOpt, EngineOpt, JobsOpt, ModelOpt, OutputOpt, PretrainedOpt, RayAddressOpt,
                              SeedOpt, ValOpt, ValPerClassOpt, WorkersOpt, err, parse_jobs, parse_list, parse_settings,
                              table, user_errors, write_json)
from vlkit.errors import VlkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adapt a frozen CLIP to new image classes with few labels.")
features_app = typer.Typer(no_args_is_help=True, help="Extract and inspect cached features.")
datasets_app = typer.Typer(invoke_without_command=True, help="List and build the offline datasets.")
app.add_typer(features_app, name="features")
app.add_typer(datasets_app, name="datasets")


def _show_version(value: bool) -> None:
    if value:
        from vlkit import __version__

        typer.echo(f"vlkit {__version__}")
        raise typer.Exit()


@app.callback()
def global_options(
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="CPU threads for torch, faiss and BLAS (default: one per core); "
                                               "on a shared machine fewer threads waste less CPU"),
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """Adapt a frozen CLIP to new image classes with few labels.

    Waiting threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE unless you set it).
    """
    from vlkit.cli.threads import configure_threads

    configure_threads(threads)


def _register_family_commands() -> None:
    """Commands written next to their library code: upgrade/predict (caches), bench, rank, serve, export."""
    from vlkit.cli.bench import bench_command
    from vlkit.cli.export import export_command
    from vlkit.cli.rank import rank_command
    from vlkit.cli.serve import serve_command
    from vlkit.cli.upgrade_commands import predict_command, upgrade_app

    for command in upgrade_app.registered_commands:
        command.callback = user_errors(command.callback)
    app.add_typer(upgrade_app, name="upgrade")
    app.command("predict")(user_errors(predict_command))
    app.command("bench")(bench_command)
    app.command("rank")(user_errors(rank_command))
    app.command("serve")(user_errors(serve_command))
    app.command("export")(export_command)


_register_family_commands()

SkipOpt = typer.Option(False, "--skip-corrupt", help="skip unreadable images (their count is logged)")
COST_COLUMNS = ["top1", "mean_per_class", "trainable_parameters", "artifact_bytes", "fit_seconds",
                "latency_ms_per_image"]


@features_app.command("extract")
@user_errors
def features_extract(
    data: str = typer.Option(..., "--data", "-d", help=DATA_HELP),
    split: str = typer.Option("train", "--split", help="train, val, test or all"),
    views: int = typer.Option(0, "--views", help="augmented views to cache besides the plain one"),
    skip_corrupt: bool = SkipOpt, model: str = ModelOpt, pretrained: Optional[str] = PretrainedOpt, device: Optional[str] = DeviceOpt,
    engine: str = EngineOpt, ray_address: Optional[str] = RayAddressOpt, workers: Optional[int] = WorkersOpt,
    output: Optional[Path] = OutputOpt,
) -> None:
    """Encode a dataset once into the feature store (a second run is a cache hit).

    --engine ray runs it as a Ray Data pipeline (decoding tasks, an encoder per worker) on a
    local cluster or the one at --ray-address; the features and store entries are the same.
    """
    from vlkit.apps.commands import extract_features

    result = extract_features(model, pretrained, data, split, views, device, skip_corrupt, engine, ray_address,
                              workers)
    table([result], ["images", "views", "seconds", "images_per_second", "cache_hits", "cache_misses"],
          title=f"features of {data}/{split}")
    err.print(f"features stored under {result['store']} (set VLKIT_CACHE to move the store)", highlight=False,
              soft_wrap=True)
    write_json(output, result)


@app.command("zeroshot")
@user_errors
def zeroshot_command(
    data: str = typer.Option(..., "--data", "-d", help=DATA_HELP),
    split: Optional[str] = typer.Option(None, "--split", help="default: test, or all of a plain folder"),
    template: Optional[List[str]] = typer.Option(None, "--template", help="prompt template with {} (repeatable)"),
    skip_corrupt: bool = SkipOpt, model: str = ModelOpt, pretrained: Optional[str] = PretrainedOpt, device: Optional[str] = DeviceOpt,
    output: Optional[Path] = OutputOpt,
) -> None:
    """Zero-shot accuracy of a CLIP model from class names and templates."""
    from vlkit.apps.commands import zeroshot

    result = zeroshot(model, pretrained, data, split, template or None, device, skip_corrupt)
    table([result], COST_COLUMNS, title=f"zero-shot {model} on {data}/{result['split']}")
    write_json(output, result)


@app.command("fit")
@user_errors
def fit_command(
    method: str = typer.Argument(..., help="a method name from `vlkit methods`"),
    data: str = typer.Option(..., "--data", "-d", help=DATA_HELP),
    shots: int = typer.Option(16, "--shots", "-k", help="labelled images per class"),
    seed: int = SeedOpt,
    setting: Optional[List[str]] = typer.Option(None, "--set", help="method option key=value (repeatable)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="save the fitted method and run record here "
                                           "(a new or empty folder; an existing run needs --force)"),
    force: bool = typer.Option(False, "--force", help="replace the run already in --run-dir"),
    views: int = typer.Option(10, "--views", help="cached augmented views per training image"),
    base_to_novel: bool = typer.Option(False, "--base-to-novel", help="train on the first half of the classes; "
                                       "report base, novel and harmonic-mean accuracy"),
    val: str = ValOpt, val_per_class: int = ValPerClassOpt,
    skip_corrupt: bool = SkipOpt, model: str = ModelOpt, pretrained: Optional[str] = PretrainedOpt, device: Optional[str] = DeviceOpt,
    engine: str = EngineOpt, ray_address: Optional[str] = RayAddressOpt, workers: Optional[int] = WorkersOpt,
    output: Optional[Path] = OutputOpt,
) -> None:
    """Fit one method on a few-shot sample; select on validation; score once on test.

    --data takes an offline dataset name, a folder with train/ and test/ (and val/) sub-folders
    of <class>/<image>, a CoOp-style folder (images/ plus a split JSON with train/val/test lists),
    a plain <class>/<image> folder (every 4th image per class is the test split), or WebDataset
    shards with classnames.txt beside them (a .tar, a shards-{000000..000127}.tar pattern, or a
    folder of .tar shards; train/, val/, test/ folders of shards for fixed splits).
    """
    settings = parse_settings(setting or [])
    if base_to_novel and run_dir is not None:
        raise VlkitError("--run-dir saves one fitted method; --base-to-novel does not save: drop one of them")
    from vlkit.apps.commands import feature_store

    store = feature_store(engine, ray_address, workers)
    if base_to_novel:
        from vlkit.apps.commands import fit_base_to_novel

        result = fit_base_to_novel(method, model, pretrained, data, shots, seed, settings, views, device, val,
                                   val_per_class, store)
        table([result], ["base", "novel", "hm", "trainable_parameters", "fit_seconds"],
              title=f"{method} base-to-novel, {shots} shots")
    else:
        from vlkit.apps.commands import fit

        result = fit(method, model, pretrained, data, shots, seed, settings, run_dir, views, device, skip_corrupt,
                     val, val_per_class, force=force, store=store)
        table([result], COST_COLUMNS, title=f"{method}, {shots} shots, seed {seed}")
    write_json(output, result)


@app.command("eval")
@user_errors
def eval_command(
    run_dir: Path = typer.Argument(..., help="a folder written by `vlkit fit --run-dir`"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="default: the run's own data"),
    split: str = typer.Option("test", "--split"), device: Optional[str] = DeviceOpt,
    output: Optional[Path] = OutputOpt,
) -> None:
    """Score a saved run on a split of its data (or other data with the same classes)."""
    from vlkit.apps.commands import evaluate_run

    result = evaluate_run(run_dir, data, split, device)
    table([result], ["test_size", "top1", "mean_per_class", "trainable_parameters", "artifact_bytes"],
          title=f"{result['method']} on {result['data']}/{split}")
    write_json(output, result)


@app.command("methods")
@user_errors
def methods_command(
    classes: int = typer.Option(10, "--classes", help="classes of the reference task for parameter counts"),
    dim: Optional[int] = typer.Option(None, "--dim", help="feature width for the counts (default: the model's)"),
    model: str = ModelOpt, pretrained: Optional[str] = PretrainedOpt,
    output: Optional[Path] = OutputOpt,
) -> None:
    """List the registered methods with their family and trainable parameters for the model's feature width."""
    from vlkit.cli.methods_catalog import feature_dim, methods_rows

    dim = dim or feature_dim(model, pretrained)
    rows = methods_rows(classes, dim)
    table(rows, ["name", "family", "input", "trainable_parameters", "paper"],
          title=f"methods (parameters for {classes} classes x {dim}-d features of {model}; "
                "'-' = depends on the encoder)")
    write_json(output, rows)


@datasets_app.callback()
@user_errors
def datasets_list(ctx: typer.Context) -> None:
    """List the offline datasets and the benchmark datasets vlkit knows."""
    if ctx.invoked_subcommand is not None:
        return
    from vlkit.data.catalog import dataset_catalog

    table(dataset_catalog(), ["name", "kind", "status", "description"], title="datasets")


@datasets_app.command("build")
@user_errors
def datasets_build(
    names: List[str] = typer.Argument(..., help="offline dataset names, or 'all'"),
    force: bool = typer.Option(False, "--force", help="rebuild even if built"),
) -> None:
    """Build offline datasets into the cache root (idempotent)."""
    from vlkit.data.offline import OFFLINE_DATASETS, build_dataset

    todo = list(OFFLINE_DATASETS) if names == ["all"] else names
    for name in todo:
        path = build_dataset(name, force=force)
        err.print(f"{name}: {path}")


@app.command("fewshot")
@user_errors
def fewshot_command(
    data: str = typer.Option("fashion-mnist-mini", "--data", "-d", help=DATA_HELP),
    methods: str = typer.Option("all", "--methods", help="all, or a comma-separated list"),
    shots: str = typer.Option("1,4,16", "--shots", help="comma-separated shot counts"),
    seeds: str = typer.Option("1", "--seeds", help="comma-separated seeds"),
    out_dir: Path = typer.Option(Path("runs/fewshot"), "--out", help="folder for results.json, the plots and the "
                                 "resumable cells.jsonl (a re-run reuses finished cells)"),
    schedule: str = typer.Option("quick", "--schedule", help="quick: short schedules for the tuners that run the "
                                 "encoder at every step (recorded per row); paper: every method's paper schedule"),
    jobs: str = JobsOpt,
    model: str = ModelOpt, pretrained: Optional[str] = PretrainedOpt, device: Optional[str] = DeviceOpt,
    engine: str = EngineOpt, ray_address: Optional[str] = RayAddressOpt, workers: Optional[int] = WorkersOpt,
    output: Optional[Path] = OutputOpt,
) -> None:
    """The main job: every few-shot method at 1, 4 and 16 shots, accuracy and cost side by side."""
    from vlkit.apps.commands import feature_store
    from vlkit.protocols.presets import by_method, run_fewshot_job

    chosen = None if methods == "all" else parse_list(methods, option="--methods")
    shot_list, seed_list = parse_list(shots, int, "--shots"), parse_list(seeds, int, "--seeds")
    store = feature_store(engine, ray_address, workers)
    result = run_fewshot_job(model, pretrained, data, chosen, shot_list, seed_list,
                             out_dir, device=device, schedule=schedule, jobs=parse_jobs(jobs), store=store,
                             on_result=lambda r: err.print(f"{r['method']:>16} {r['shots']:>2} shots: "
                                                           f"{r['top1']:.1f}% in {r['fit_seconds']:.1f}s"))
    shot_columns = [f"{k}-shot" for k in sorted(set(shot_list))]
    table(by_method(result["summary"]), ["method", *shot_columns, "params", "fit s", "ms/img"],
          title=f"{model} on {data}: top-1 (%) by shots, cost at {shot_columns[-1]}")
    if schedule == "quick":
        err.print("* quick schedule (settings per row in results.json); --schedule paper runs the papers' own")
    err.print(f"wrote {out_dir / 'results.json'} and {result['plot']}")
    write_json(output, result)
    if result["failures"]:
        for failure in result["failures"]:
            err.print(f"[red]failed:[/red] {failure['method']} {failure['shots']} shots: {failure['error']}")
        raise typer.Exit(1)


@app.command("adapt")
@user_errors
def adapt_command(
    source: str = typer.Option(..., "--source", "-s", help="labelled source domain (dataset name or folder)"),
    target: str = typer.Option(..., "--target", "-t", help="unlabelled target domain, same classes"),
    method: str = typer.Option("all", "--method", help="a method, a comma-separated list, or all"),
    seed: int = SeedOpt,
    setting: Optional[List[str]] = typer.Option(None, "--set", help="method option key=value (repeatable)"),
    views: int = typer.Option(10, "--views", help="cached augmented views per image"),
    model: str = ModelOpt, pretrained: Optional[str] = PretrainedOpt, device: Optional[str] = DeviceOpt,
    output: Optional[Path] = OutputOpt,
) -> None:
    """Adapt from a labelled source to an unlabelled target; target labels are read only to score."""
    from vlkit.apps.commands import adapt

    result = adapt(parse_list(method, option="--method"), model, pretrained, source, target, seed, parse_settings(setting or []),
                   views, device)
    table(result["rows"], ["method", "task_kind", "top1", "mean_per_class", "pseudo_label_precision",
                           "trainable_parameters", "fit_seconds"], title=f"{source} -> {target}")
    write_json(output, result)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
