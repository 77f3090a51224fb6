"""``run_bench(jobs=2)``: cells in two worker processes give the results one process gives."""
from __future__ import annotations

import pytest

from vlkit.errors import VlkitError
from vlkit.protocols import run_bench
from vlkit.protocols.parallel_cells import default_jobs

ARGS = dict(model="test-tiny", data=["fashion-mnist-mini"], methods="zero-shot,linear-probe,tip-adapter",
            shots=[1, 2], seeds=[1], views=1, device="cpu", test_per_class=20)


def test_two_workers_give_the_cells_one_process_gives(tmp_path, session_store) -> None:
    one = run_bench(out=tmp_path / "one", store=session_store, **ARGS)
    two = run_bench(out=tmp_path / "two", store=session_store, jobs=2, **ARGS)
    assert (one["ran"], two["ran"], two["failed"]) == (6, 6, [])
    top1 = {(r["cell"]["method"], r["cell"]["shots"]): r["result"]["top1"] for r in one["records"]}
    assert {(r["cell"]["method"], r["cell"]["shots"]): r["result"]["top1"] for r in two["records"]} == \
        pytest.approx(top1, abs=0.51)  # another thread count may move a logit's last digits: at most 1 of 200 images
    assert sorted(r["key"] for r in two["records"]) == sorted(r["key"] for r in one["records"])
    assert run_bench(out=tmp_path / "two", store=session_store, jobs=2, **ARGS)["ran"] == 0  # resumable as before


def test_a_failing_cell_in_a_worker_is_recorded_and_the_others_finish(tmp_path, session_store) -> None:
    settings = {"linear-probe": {"no_such_option": 1}}
    result = run_bench(out=tmp_path / "b", store=session_store, jobs=2, settings=settings, **ARGS)
    assert result["ran"] == 4 and len(result["failed"]) == 2
    assert all(f["method"] == "linear-probe" and "no_such_option" in f["error"] for f in result["failed"]), \
        result["failed"]
    with pytest.raises(VlkitError, match="failed: .*no_such_option"):
        run_bench(out=tmp_path / "c", store=session_store, jobs=2, settings=settings, fail_fast=True, **ARGS)


def test_default_jobs_is_two_on_a_cpu_machine_of_two_cores(monkeypatch) -> None:
    import os

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_jobs() == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert default_jobs() == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_jobs() == 1


def test_workers_import_this_vlkit_when_another_is_on_the_path(tmp_path, session_store, monkeypatch) -> None:
    # a script put a source checkout first on sys.path after vlkit was imported (scripts/ do sys.path.insert)
    shadow = tmp_path / "checkout" / "vlkit"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the shadowing checkout was imported')\n")
    monkeypatch.syspath_prepend(str(shadow.parent))
    args = {**ARGS, "methods": "zero-shot", "shots": [1, 2]}
    result = run_bench(out=tmp_path / "b", store=session_store, jobs=2, **args)
    assert (result["ran"], result["failed"]) == (2, [])
