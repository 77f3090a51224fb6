"""The one Result: built by scoring.score for every protocol and command, numbers against a plain count."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from vlkit.errors import VlkitError
from vlkit.methods import create_method
from vlkit.protocols.fewshot import run_fewshot
from vlkit.protocols.scoring import measure, method_logits, score
from vlkit.report.result import Result

ROOT = Path(__file__).resolve().parents[1]
OLD_KEYS = ("method", "family", "shots", "seed", "model", "pretrained", "dataset", "test_size", "top1",
            "mean_per_class", "trainable_parameters", "artifact_bytes", "fit_seconds", "peak_memory_bytes",
            "memory_kind", "latency_ms_per_image", "fit_info")


def test_score_matches_a_plain_count(colour_task, colour_test, tiny_backbone, session_store):
    method = create_method("linear-probe")
    with measure(tiny_backbone.device) as cost:
        method.fit(colour_task)
    result = score(method, tiny_backbone, colour_test, session_store, cost, shots=4, seed=0)
    pred = method_logits(method, tiny_backbone, colour_test, session_store).argmax(-1).numpy()
    labels = np.array(colour_test.labels)
    per_class = {colour_test.classnames[c]: 100.0 * np.mean(pred[labels == c] == c) for c in np.unique(labels)}
    assert result.top1 == pytest.approx(100.0 * np.mean(pred == labels))
    assert result.per_class == pytest.approx(per_class)
    assert result.mean_per_class == pytest.approx(np.mean(list(per_class.values())))
    assert result.test_size == len(colour_test) and result.fingerprint == tiny_backbone.fingerprint
    assert result.fit_seconds == cost["seconds"] and result.memory_kind == cost["memory_kind"]
    assert result.trainable_parameters == method.trainable_parameters and result.artifact_bytes > 0
    assert result.latency_ms_per_image > 0
    unfitted_cost = score(method, tiny_backbone, colour_test, session_store, latency=False)
    assert (unfitted_cost.fit_seconds, unfitted_cost.latency_ms_per_image) == (None, None)


def test_result_keeps_the_json_names_and_reads_like_its_dict(colour_pool, colour_test, tiny_backbone,
                                                             session_store):
    result = run_fewshot(tiny_backbone, colour_pool, colour_test, "linear-probe", 2, 0, session_store, views=1,
                         max_iter=50)
    as_dict = result.to_dict()
    assert all(key in as_dict for key in OLD_KEYS)
    assert result["top1"] == result.top1 and dict(result) == as_dict and result.settings == {"max_iter": 50}
    assert json.loads(json.dumps(as_dict)) == as_dict  # JSON-ready as it is
    with pytest.raises(KeyError):
        result["extras"]


def test_extras_may_not_overwrite_a_common_field():
    with pytest.raises(VlkitError, match="top1"):
        Result(method="m", top1=1.0, mean_per_class=1.0, extras={"top1": 2.0})
    result = Result(method="m", top1=1.0, mean_per_class=1.0, extras={"base": 3.0})
    assert result.to_dict()["base"] == 3.0 and result["base"] == 3.0 and "extras" not in result.to_dict()


def _sources(*folders: str) -> dict[str, str]:
    files = [p for folder in folders for p in (ROOT / folder).rglob("*.py")]
    return {str(p.relative_to(ROOT)): p.read_text() for p in files}


def test_one_copy_of_each_shared_helper_and_no_key_renaming():
    code = _sources("vlkit", "prompts", "caches", "cli", "benchmarks")
    for helper in ("harmonic_mean", "plot_accuracy_vs_shots", "method_logits", "quick_settings"):
        owners = [path for path, text in code.items() if re.search(rf"^def {helper}\(", text, re.M)]
        assert len(owners) == 1, (helper, owners)
    for path, text in code.items():
        assert "pstdev" not in text, path  # one std: the sample one (vlkit.report.summary)
        assert not re.search(r"base_top1|novel_top1|\"harmonic_mean\"", text), path
    assert "importlib" not in code["vlkit/protocols/catalog.py"]
    presets = code["vlkit/protocols/presets.py"]
    assert not re.search(r"QUICK_SCHEDULES|FEW_STEP_TUNER_LR|QUICK_METHOD_SCHEDULES", presets)
