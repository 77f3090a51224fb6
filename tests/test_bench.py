"""vlkit bench: resumable cells, mean ± std tables, Pareto front, reports, published numbers."""
from __future__ import annotations

import copy
import json
import statistics

import pytest

from conftest import colour_dataset
from vlkit.protocols import Cell, CellLog, DataSource, pareto_front, resolve_methods, run_bench
from vlkit.report.published import compare, load_published
from vlkit.report.tables import build_summary, to_markdown
from vlkit.errors import VlkitError
from vlkit.methods import Method

METHODS = "zero-shot,linear-probe"


@pytest.fixture(scope="module")
def source() -> DataSource:
    test = colour_dataset(8, seed=1, name="colours-test")
    return DataSource.from_datasets("colours", colour_dataset(12, seed=0), test)


@pytest.fixture
def fits(monkeypatch):
    """Count Method.fit calls; ``fits.fail_at = n`` makes the n-th call raise KeyboardInterrupt (a Ctrl-C)."""
    original = Method.fit

    class Counter:
        calls = 0
        fail_at: int | None = None

    def counting(self, *args, **kwargs):
        Counter.calls += 1
        if Counter.fail_at is not None and Counter.calls == Counter.fail_at:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Method, "fit", counting)
    return Counter


def bench(out, source, backbone, store, **kw):
    args = dict(data=[source], methods=METHODS, shots=[1], seeds=[1, 2], out=out, views=1, backbone=backbone,
                store=store, fail_fast=True)
    return run_bench(**{**args, **kw})


def test_cells_of_other_weights_under_the_same_name_are_run_again(tmp_path, source, tiny_backbone, session_store,
                                                                   fits):
    # a bench folder reused after the model's weights changed must not serve the old weights' cells
    first = bench(tmp_path, source, tiny_backbone, session_store)
    retrained = copy.copy(tiny_backbone)
    retrained._fingerprint = "test-tiny-retrained"  # same name, other weights
    again = bench(tmp_path, source, retrained, session_store)
    assert (first["ran"], again["ran"], again["skipped"], fits.calls) == (4, 4, 0, 8)
    assert bench(tmp_path, source, retrained, session_store)["ran"] == 0


def test_weights_identity_follows_the_files(tmp_path, monkeypatch):
    from vlkit.backbones import registry
    from vlkit.protocols.runner import weights_identity

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"one")
    monkeypatch.setitem(registry._WEIGHT_FILES, "fake-mini", (weights,))
    before = weights_identity("fake-mini", "")
    weights.write_bytes(b"two")
    assert before and weights_identity("fake-mini", "") not in ("", before)
    assert weights_identity("ViT-B-32", "openai") == ""  # the tag names the weights
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(b"x" * 10)
    assert weights_identity("ViT-B-32", str(checkpoint)).startswith("10-")
    # an offline model with a file that replaces its image tower: two files, two identities, so a
    # resumed bench in the same folder never reuses a cell of the other tower
    other = tmp_path / "other.pt"
    other.write_bytes(b"y" * 11)
    with_file, with_other = weights_identity("fake-mini", str(checkpoint)), weights_identity("fake-mini", str(other))
    assert len({with_file, with_other, weights_identity("fake-mini", "")}) == 3


def test_bench_writes_every_report_and_rerun_does_no_work(tmp_path, source, tiny_backbone, session_store, fits):
    result = bench(tmp_path, source, tiny_backbone, session_store)
    assert (result["cells"], result["ran"], result["skipped"], fits.calls) == (4, 4, 0, 4)
    lines = (tmp_path / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["result"]["top1"] >= 0 for line in lines)
    for name in ("results.md", "summary.json", "accuracy_vs_shots.png", "accuracy_vs_cost.png", "report.html"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "accuracy_vs_shots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page and "linear-probe" in page
    again = bench(tmp_path, source, tiny_backbone, session_store)
    assert (again["ran"], again["skipped"], fits.calls) == (0, 4, 4)  # no fit at all on a re-run
    assert len((tmp_path / "cells.jsonl").read_text().splitlines()) == 4


def test_interrupted_bench_resumes_only_missing_cells(tmp_path, source, tiny_backbone, session_store, fits):
    fits.fail_at = 3  # Ctrl-C during the third cell: two cells are stored
    with pytest.raises(KeyboardInterrupt):
        bench(tmp_path, source, tiny_backbone, session_store)
    assert len(CellLog(tmp_path / "cells.jsonl").done()) == 2
    fits.calls, fits.fail_at = 0, None
    result = bench(tmp_path, source, tiny_backbone, session_store)
    assert (result["ran"], result["skipped"], fits.calls) == (2, 2, 2)
    keys = [json.loads(line)["key"] for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 4


def test_torn_last_line_is_ignored_and_cut(tmp_path, source, tiny_backbone, session_store, fits):
    bench(tmp_path, source, tiny_backbone, session_store, seeds=[1])
    log_file = tmp_path / "cells.jsonl"
    with log_file.open("ab") as handle:  # a kill in the middle of a write
        handle.write(b'{"version": 1, "cell": {"data": "col')
    assert len(CellLog(log_file).done()) == 2
    fits.calls = 0
    result = bench(tmp_path, source, tiny_backbone, session_store)
    assert (result["ran"], fits.calls) == (2, 2)
    assert all(json.loads(line) for line in log_file.read_text().splitlines())


def test_a_second_writer_on_the_same_folder_is_refused(tmp_path):
    with CellLog(tmp_path / "cells.jsonl"):
        with pytest.raises(VlkitError, match="another vlkit bench"):
            CellLog(tmp_path / "cells.jsonl").__enter__()


def _record(data, method, shots, seed, top1, params=0, fit=0.1):
    cell = Cell(data, method, shots, seed, "fewshot", "m", "")
    return {"cell": cell.__dict__, "key": cell.key,
            "result": {"top1": top1, "family": "f", "trainable_parameters": params, "artifact_bytes": 100,
                       "fit_seconds": fit, "peak_memory_bytes": 1, "latency_ms_per_image": 0.1}}


def test_table_shows_mean_and_sample_std_over_seeds():
    values = {("a", "lp", 1): [50.0, 61.0, 58.5], ("a", "lp", 4): [70.25, 71.0, 69.0],
              ("b", "lp", 1): [10.0, 30.0, 20.0], ("b", "lp", 4): [40.0, 41.0, 45.5]}
    records = [_record(d, m, k, seed, v) for (d, m, k), vs in values.items() for seed, v in zip([1, 2, 3], vs)]
    summary = build_summary(records, ["a", "b"], ["lp"], [1, 4], [1, 2, 3], ["top1"], {"model": "m"})
    text = to_markdown(summary)
    for (data, method, shots), vs in values.items():
        expected = f"{statistics.mean(vs):.1f} ± {statistics.stdev(vs):.1f}"
        assert expected in text.split(f"## {data}")[1].split("##")[0], (data, shots, expected)
    # the average over datasets is taken per seed, then mean ± std over seeds
    per_seed = [(values[("a", "lp", 4)][i] + values[("b", "lp", 4)][i]) / 2 for i in range(3)]
    row = summary.row("average", "lp", 4).metrics["top1"]
    assert row.mean == pytest.approx(statistics.mean(per_seed)) and row.std == pytest.approx(statistics.stdev(per_seed))


def test_real_bench_table_matches_plain_computation(tmp_path, source, tiny_backbone, session_store):
    bench(tmp_path, source, tiny_backbone, session_store)
    records = [json.loads(line) for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    table = (tmp_path / "results.md").read_text()
    for method in METHODS.split(","):
        vs = [r["result"]["top1"] for r in records if r["cell"]["method"] == method]
        assert f"| {method} | {statistics.mean(vs):.1f} ± {statistics.stdev(vs):.1f} |" in table


def test_pareto_front_on_a_hand_made_example():
    points = [(0, 50), (10, 60), (5, 55), (10, 58), (20, 60), (3, 40), (5, 55), (30, 70)]
    assert pareto_front(points) == [0, 2, 6, 1, 7]  # cheapest first; equal points both kept
    assert pareto_front([]) == []
    assert pareto_front([(1, 1)]) == [0]
    records = [_record("a", m, 16, 1, acc, params=p) for m, p, acc in
               [("zs", 0, 60.0), ("lp", 5000, 70.0), ("big", 90000, 69.0), ("coop", 2048, 72.0)]]
    summary = build_summary(records, ["a"], ["zs", "lp", "big", "coop"], [16], [1], ["top1"])
    assert summary.front("trainable_parameters") == ["zs", "coop"]


def test_methods_all_minus_some():
    every = resolve_methods("all")
    assert "zero-shot" in every and "linear-probe" in every
    assert "zero-shot" not in resolve_methods("all,-zero-shot")
    assert resolve_methods("linear-probe,zero-shot,linear-probe") == ["linear-probe", "zero-shot"]
    with pytest.raises(VlkitError, match="unknown method"):
        resolve_methods("no-such-method")


def test_bad_arguments_are_one_line_user_errors(tmp_path, source):
    with pytest.raises(VlkitError, match="shots"):
        run_bench(data=[source], methods=METHODS, shots=[0], out=tmp_path)
    with pytest.raises(VlkitError, match="protocol"):
        run_bench(data=[source], methods=METHODS, protocol="nope", out=tmp_path)


def test_failing_cell_is_recorded_and_retried(tmp_path, source, tiny_backbone, session_store, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(Method, "fit", broken)
    result = bench(tmp_path, source, tiny_backbone, session_store, seeds=[1], fail_fast=False)
    assert len(result["failed"]) == 2 and "boom" in result["failed"][0]["error"]
    assert not (tmp_path / "cells.jsonl").exists() or not (tmp_path / "cells.jsonl").read_text()
    assert len((tmp_path / "failed.jsonl").read_text().splitlines()) == 2


def test_published_numbers_are_sourced_and_compare_by_model():
    doc = load_published()
    for entry in doc["entries"]:
        assert entry["source"] in doc["sources"] and doc["sources"][entry["source"]]["url"].startswith("https://")
        for per_shots in entry["results"].values():
            for metrics in per_shots.values():
                assert all(0 < v <= 100 for v in metrics.values())
    records = [_record("dtd", "tip-adapter", 16, 1, 61.0), _record("dtd", "coop", 16, 1, 60.0)]
    info = {"model": "RN50", "pretrained": "openai", "protocol": "fewshot"}
    summary = build_summary(records, ["dtd"], ["tip-adapter", "coop"], [16], [1], ["top1"], info)
    header, rows, note = compare(summary)
    assert header[2] == "DTD (yours / paper)" and "ResNet-50" in note
    assert ["Tip-Adapter", "Zhang et al.", "61.0 / 60.9"] in rows  # exp.log: DTD 16 shots 60.93
    other = build_summary(records, ["dtd"], ["coop"], [16], [1], ["top1"], {**info, "model": "vlkit-mini"})
    assert compare(other) is None


def test_base2novel_protocol_reports_base_novel_and_harmonic_mean(tmp_path, source, tiny_backbone, session_store):
    from vlkit.protocols.base_to_novel import harmonic_mean

    result = run_bench(data=[source], methods="coop", shots=[2], seeds=[1, 2], out=tmp_path, protocol="base2novel",
                       views=1, backbone=tiny_backbone, store=session_store, fail_fast=True)
    records = [r["result"] for r in result["records"]]
    assert all(r["hm"] == pytest.approx(harmonic_mean(r["base"], r["novel"])) for r in records)
    from vlkit.protocols.runner import quick_settings

    quick = quick_settings("coop")
    assert quick and all(r["base"] == r["top1"] and r["settings"] == quick for r in records)  # quick schedule
    table = result["table"]
    assert "base-class accuracy" in table
    for key in ("base", "novel", "hm"):
        values = [r[key] for r in records]
        assert f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" in table, key
    assert set(resolve_methods("all", "base2novel")) <= set(resolve_methods("all"))


def test_make_results_renders_every_result_file_and_checks_staleness(tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "make_results.py"
    spec = importlib.util.spec_from_file_location("make_results", script)
    make_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_results)
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.json").write_text(json.dumps({"benchmark": "a", "command": "python a.py", "machine": "2 CPUs",
                                                "ratios": {"x_vs_y": 3.5}, "plain_over_hit": 120.0, "n": 7}))
    (results / "b.json").write_text(json.dumps({"benchmark": "b"}))
    out = tmp_path / "RESULTS.md"
    assert make_results.main(["--results", str(results), "--output", str(out)]) == 0
    text = out.read_text()
    assert "python a.py" in text and "| x_vs_y | 3.5000 |" in text and "| plain_over_hit | 120.0 |" in text
    assert "| n | 7 |" in text and "b.json: missing command, machine" in text
    assert make_results.main(["--check", "--results", str(results), "--output", str(out)]) == 0
    (results / "c.json").write_text(json.dumps({"benchmark": "c", "command": "c", "machine": "m"}))
    assert make_results.main(["--check", "--results", str(results), "--output", str(out)]) == 1


def test_other_settings_are_other_cells(tmp_path, source, tiny_backbone, session_store, fits):
    bench(tmp_path, source, tiny_backbone, session_store, seeds=[1])
    fits.calls = 0
    assert bench(tmp_path, source, tiny_backbone, session_store, seeds=[1], views=2)["ran"] == 2  # not reused
    assert fits.calls == 2
    with pytest.raises(VlkitError, match="twice"):
        run_bench(data=[source, source], methods=METHODS, out=tmp_path)


def test_a_dataset_that_cannot_load_stops_the_bench(tmp_path, tiny_backbone, session_store):
    def missing(split):
        raise VlkitError(f"no dataset folder for {split}")

    with pytest.raises(VlkitError, match="no dataset folder"):
        run_bench(data=[DataSource("gone", missing)], methods=METHODS, shots=[1], seeds=[1, 2], out=tmp_path,
                  backbone=tiny_backbone, store=session_store)
    assert not (tmp_path / "failed.jsonl").exists()


def test_schedule_overrides_reach_the_method_and_key_the_cell(tmp_path, source, tiny_backbone, session_store,
                                                             monkeypatch):
    from vlkit.methods.linear_probe import LinearProbe, LinearProbeConfig

    monkeypatch.setattr(LinearProbeConfig, "quick", {"max_iter": 7})
    seen = []
    original = LinearProbe._fit
    monkeypatch.setattr(LinearProbe, "_fit",
                        lambda self, task: (seen.append(self.config.max_iter), original(self, task)))
    quick = bench(tmp_path, source, tiny_backbone, session_store, methods="linear-probe", seeds=[1])
    paper = bench(tmp_path, source, tiny_backbone, session_store, methods="linear-probe", seeds=[1], schedule="paper")
    assert (quick["ran"], paper["ran"], seen) == (1, 1, [7, 1000])
    mine = bench(tmp_path, source, tiny_backbone, session_store, methods="linear-probe", seeds=[1],
                 settings={"linear-probe": {"max_iter": 9}})  # over the quick schedule's 7
    assert (mine["ran"], seen[-1], mine["records"][0]["result"]["settings"]) == (1, 9, {"max_iter": 9})
    cells = [json.loads(line)["cell"] for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert [c["config"] for c in cells] == ['{"max_iter": 7}', "", '{"max_iter": 9}']
    with pytest.raises(VlkitError, match="not one of the chosen methods"):
        bench(tmp_path, source, tiny_backbone, session_store, methods="linear-probe", settings={"coop": {}})
    assert "Schedule: quick; linear-probe: max_iter=7." in quick["table"]
    with pytest.raises(VlkitError, match="schedule"):
        bench(tmp_path, source, tiny_backbone, session_store, schedule="fast")


def test_test_per_class_scores_a_class_balanced_subset_under_its_own_name(tmp_path, source, tiny_backbone,
                                                                           session_store):
    result = bench(tmp_path, source, tiny_backbone, session_store, methods="zero-shot", seeds=[1], test_per_class=3)
    records = [json.loads(line) for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert [r["cell"]["data"] for r in records] == ["colours:test3"]
    classes = len(source.split("test").classnames)
    assert [r["result"]["test_size"] for r in records] == [3 * classes]
    assert "colours:test3" in result["table"]
    with pytest.raises(VlkitError, match="test-per-class"):
        bench(tmp_path, source, tiny_backbone, session_store, test_per_class=0)
