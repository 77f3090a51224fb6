"""The main job: table rows, JSON, plot, and the quick schedule recorded per row."""
from __future__ import annotations

import json
import statistics

from typer.testing import CliRunner

from vlkit.cli.main import app
from vlkit.methods.tuners.base import TunerConfig
from vlkit.protocols.presets import run_fewshot_job


def test_fewshot_job_writes_results_and_plot(tmp_path):
    result = run_fewshot_job("test-tiny", data="fashion-mnist-mini", methods=["zero-shot", "linear-probe", "lora"],
                             shots=[1, 4], seeds=[1], out_dir=tmp_path, views=1)
    assert not result["failures"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {(r["method"], r["shots"]) for r in saved["summary"]} == {
        (m, k) for m in ("zero-shot", "linear-probe", "lora") for k in (1, 4)}
    assert (tmp_path / "accuracy_vs_shots.png").stat().st_size > 10_000
    lora = [r for r in saved["rows"] if r["method"] == "lora"]
    assert all(r["schedule"].startswith("quick: ") for r in lora)
    assert all(f"{k}={v}" in lora[0]["schedule"] for k, v in TunerConfig.quick.items())
    assert lora[0]["schedule"].endswith("lr=0.002")  # LoRA's few-step learning rate, from its config
    assert all(r["schedule"] == "paper" for r in saved["rows"] if r["method"] != "lora")
    lp4 = next(r for r in saved["summary"] if r["method"] == "linear-probe" and r["shots"] == 4)
    zs4 = next(r for r in saved["summary"] if r["method"] == "zero-shot" and r["shots"] == 4)
    assert lp4["top1"] > zs4["top1"]  # even random tiny features beat a random text tower


def test_fewshot_job_and_bench_print_the_same_mean_and_sample_std(tmp_path):
    from vlkit.protocols import run_bench
    from vlkit.protocols.presets import by_method

    job = run_fewshot_job("test-tiny", data="fashion-mnist-mini", methods=["linear-probe"], shots=[1],
                          seeds=[1, 2, 3], out_dir=tmp_path, views=1)
    values = [r["top1"] for r in job["rows"]]
    expected = f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"  # sample std (n - 1)
    assert statistics.stdev(values) != statistics.pstdev(values)
    assert by_method(job["summary"])[0]["1-shot"] == expected
    bench = run_bench("test-tiny", data=["fashion-mnist-mini"], methods="linear-probe", shots=[1], seeds=[1, 2, 3],
                      out=tmp_path, views=1)  # the same cells: read back, not run again
    assert bench["ran"] == 0 and f"| linear-probe | {expected} |" in bench["table"]


def test_quick_settings_live_on_the_method_configs():
    from vlkit.methods import method_class
    from vlkit.protocols.presets import quick_settings

    assert quick_settings("coop") == {"epochs": 20, "lr": 2e-2, "warmup_epochs": 0}
    assert quick_settings("maple") == {"epochs": 1}
    assert quick_settings("cocoop") == {"epochs": 1, "warmup_epochs": 0}
    assert quick_settings("ia3") == {"iters_per_shot": 2, "batch_size": 16, "val_checks": 1, "lr": 3e-2}
    assert quick_settings("linear-probe") == {} and quick_settings("tip-adapter-f") == {}
    assert method_class("vpt-deep").Config.quick["lr"] == method_class("vpt-shallow").Config.quick["lr"] == 1e-1


def test_fewshot_cli_unknown_method_is_one_line():
    result = CliRunner().invoke(app, ["fewshot", "--model", "test-tiny", "--methods", "zero-shot,nope"])
    assert result.exit_code == 1 and "unknown method 'nope'" in result.output


def test_quick_schedule_never_lengthens_a_paper_schedule():
    from vlkit.protocols.presets import fewshot_methods, quick_settings
    from vlkit.methods import method_class

    for name in fewshot_methods():
        quick, paper = quick_settings(name), method_class(name).Config()
        for key, value in quick.items():
            assert hasattr(paper, key), f"{name}: quick option {key} is not a config field"
            if key == "epochs":
                assert all(value <= paper.default_epochs(k) for k in (1, 4, 16)), name
            elif key in ("iters_per_shot", "val_checks", "warmup_epochs"):
                assert value <= getattr(paper, key), (name, key)


def test_terminal_table_has_one_row_per_method_with_quick_marked():
    from vlkit.protocols.presets import by_method

    summary = [{"method": m, "shots": k, "top1": 10.0 * k, "top1_std": 1.0, "seeds": seeds, "schedule": sched,
                "trainable_parameters": 5, "fit_seconds": float(k), "latency_ms_per_image": 0.5}
               for m, sched, seeds in (("coop", "quick: epochs=10", 2), ("zero-shot", "paper", 1)) for k in (16, 1)]
    rows = by_method(summary)
    assert [r["method"] for r in rows] == ["coop*", "zero-shot"]
    assert rows[0]["1-shot"] == "10.0 ± 1.0" and rows[0]["16-shot"] == "160.0 ± 1.0" and rows[0]["fit s"] == 16.0
    assert rows[1]["16-shot"] == "160.0"


def test_quick_job_shows_not_run_instead_of_a_number(tmp_path, monkeypatch):
    """A method whose quick schedule is not worth showing is not run; its row says so in every column."""
    from vlkit.methods import method_class
    from vlkit.protocols.presets import NOT_RUN, by_method

    monkeypatch.setattr(method_class("coop").Config, "quick_not_run", "quick schedule not shown to learn", raising=False)
    job = run_fewshot_job("test-tiny", data="fashion-mnist-mini", methods=["zero-shot", "coop"], shots=[1, 4],
                          seeds=[1], out_dir=tmp_path, views=1)
    assert {r["method"] for r in job["rows"]} == {"zero-shot"}  # coop never ran
    assert job["not_run"] == {"coop": "quick schedule not shown to learn"} and "coop" not in job["quick_schedules"]
    rows = by_method(job["summary"])
    assert [r["method"] for r in rows] == ["zero-shot", "coop"]
    assert rows[1]["1-shot"] == rows[1]["4-shot"] == NOT_RUN == "not run (quick)"
    assert rows[0]["1-shot"] not in ("", NOT_RUN)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["top1"] for r in saved["summary"] if r["method"] == "coop"] == [None, None]
    paper = run_fewshot_job("test-tiny", data="fashion-mnist-mini", methods=["coop"], shots=[1], seeds=[1],
                            out_dir=tmp_path / "paper", views=1, schedule="paper")
    assert paper["not_run"] == {} and [r["method"] for r in paper["rows"]] == ["coop"]  # the paper job runs it
