"""Extraction on Ray (issue 17, part 3): the same features, keys and records as the local path; resumable.

The fast tests need no Ray: option errors, the shard plan and gathering, and the store's engine
hook driven by a plain in-process engine. The slow test starts a local Ray cluster (CPU, 2
workers, test-tiny) and skips when Ray is not installed (``pip install "vlkit[ray]"``).
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vlkit.cli.main import app
from vlkit.errors import VlkitError
from vlkit.features.ray_engine import _ShardGather, feature_engine, plan_shards
from vlkit.features.store import FeatureStore
from conftest import colour_dataset

runner = CliRunner()


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    """A plain <class>/<image> folder of 2 x 6 PNGs, and a private cache."""
    monkeypatch.setenv("VLKIT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for name, rgb in {"red": (200, 30, 30), "blue": (30, 40, 200)}.items():
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(6):
            img = np.clip(np.array(rgb) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "imgs" / name / f"{i}.png")
    return tmp_path / "imgs"


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


# ---- fast: no Ray started ----------------------------------------------------------------------
def test_engine_ray_without_ray_installed_is_one_line(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    for command in (["features", "extract", "--split", "all"], ["fit", "zero-shot", "--views", "0"]):
        result = runner.invoke(app, [*command, "--model", "test-tiny", "--data", str(folder), "--engine", "ray"])
        assert 'pip install "vlkit[ray]"' in _one_line_error(result)


@pytest.mark.parametrize("options, message", [
    (["--engine", "ray", "--ray-address", "not an address"], "is not a Ray address"),
    (["--engine", "ray", "--ray-address", "http://head"], "is not a Ray address"),
    (["--engine", "spark"], "is not an extraction engine"),
    (["--ray-address", "10.0.0.1:6379"], "add --engine ray"),
    (["--workers", "2"], "add --engine ray"),
])
def test_bad_engine_options_are_one_line_before_any_work(folder, options, message):
    result = runner.invoke(app, ["features", "extract", "--model", "test-tiny", "--data", str(folder), *options])
    assert message in _one_line_error(result)


def test_an_address_where_no_cluster_listens_is_one_line_at_once(folder):
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    result = runner.invoke(app, ["features", "extract", "--model", "test-tiny", "--data", str(folder),
                                 "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"])
    assert "no Ray head node answers there" in _one_line_error(result)
    assert time.perf_counter() - started < 10  # ray.init alone would retry for minutes


def test_the_default_path_never_imports_ray(tmp_path):
    code = ("import sys; from vlkit.apps.commands import feature_store; from vlkit.cli.main import app; "
            "store = feature_store('local'); print(store.engine is None, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)  # not the checkout: its vlkit/ would shadow the installed package
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_library_engine_names():
    assert feature_engine("local") is None
    with pytest.raises(VlkitError, match="--workers takes an integer >= 1"):
        feature_engine("ray", workers=0)


class FakeRay:
    """What RayEngine reads of a cluster: its resources."""

    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


def test_workers_the_cluster_cannot_hold_are_one_line_instead_of_a_pipeline_that_waits_forever():
    from vlkit.features.ray_engine import RayEngine, RayEngineError

    assert RayEngine(workers=2)._encoder_resources(FakeRay(CPU=3)) == (2, {"num_cpus": 1})
    assert RayEngine()._encoder_resources(FakeRay(CPU=8, GPU=4)) == (4, {"num_gpus": 1, "num_cpus": 1})
    with pytest.raises(RayEngineError, match="has 2 CPU.*need 3"):
        RayEngine(workers=2)._encoder_resources(FakeRay(CPU=2))  # no CPU left for decoding
    with pytest.raises(RayEngineError, match="has 8 CPU.*need 9"):
        RayEngine(workers=2, threads=4)._encoder_resources(FakeRay(CPU=8))
    with pytest.raises(RayEngineError, match="has 1 GPU"):
        RayEngine(workers=2)._encoder_resources(FakeRay(CPU=16, GPU=1))


def test_shard_plan_maps_positions_to_the_missing_shards_rows():
    plan = plan_shards([1, 3, 4], shard_size=4, total=18)  # shards 1, 3 and the short last one (rows 16, 17)
    assert plan.rows == 4 + 4 + 2
    expected = [4, 5, 6, 7, 12, 13, 14, 15, 16, 17]  # written out by hand
    assert plan.indices(np.arange(plan.rows)).tolist() == expected


def test_gather_writes_each_shard_once_all_its_rows_are_in_whatever_the_order():
    plan = plan_shards([0, 2], shard_size=3, total=8)  # rows 0-2 and 6-7
    written = {}
    gather = _ShardGather(plan, 2, lambda shard, feats, norms: written.setdefault(shard, (feats.clone(), norms)))
    rows = {i: (np.array([i, -i], np.float32), np.float32(10 + i)) for i in (0, 1, 2, 6, 7)}

    def add(*index):
        gather.add(np.array(index), np.stack([rows[i][0] for i in index]), np.array([rows[i][1] for i in index]))

    add(7, 1)
    assert written == {}
    add(0, 6)  # shard 2 (rows 6, 7) is complete
    assert list(written) == [2]
    add(2)
    assert sorted(written) == [0, 2] and gather.written == 2
    assert written[0][0].tolist() == [[0, 0], [1, -1], [2, -2]]
    assert written[2][1].tolist() == [16, 17]


class InProcessEngine:
    """The engine protocol without Ray: encodes the shards it is given, in this process, in reverse order."""

    def __init__(self):
        self.calls = []

    def encode_shards(self, images, backbone, dataset, shards, shard_size, batch_size, write, advance):
        self.calls.append(list(shards))
        for shard in reversed(shards):
            start = shard * shard_size
            batch = torch.stack([images[i] for i in range(start, min(len(dataset), start + shard_size))])
            unit, norm = backbone.encode_images_with_norms(batch)
            write(shard, unit, norm)
            advance(len(batch))


def test_store_hands_only_missing_shards_to_its_engine_and_writes_the_local_files(tmp_path, tiny_backbone):
    data = colour_dataset(5)  # 20 images = 3 shards of 8
    local = FeatureStore(tmp_path / "local", shard_size=8, batch_size=8, num_workers=0)
    engine = InProcessEngine()
    remote = FeatureStore(tmp_path / "remote", shard_size=8, batch_size=8, engine=engine)
    for view in (0, 2):
        expected = local.image_features(tiny_backbone, data, view)
        assert torch.equal(remote.image_features(tiny_backbone, data, view), expected)
        assert torch.equal(remote.image_norms(tiny_backbone, data, view), local.image_norms(tiny_backbone, data, view))
        a, b = local.entry_dir(tiny_backbone, data, view), remote.entry_dir(tiny_backbone, data, view)
        assert a.relative_to(local.root) == b.relative_to(remote.root)  # the same content key
        assert json.loads((a / "meta.json").read_text()) == json.loads((b / "meta.json").read_text())
    assert engine.calls == [[0, 1, 2], [0, 1, 2]]
    entry = remote.entry_dir(tiny_backbone, data, 0)
    (entry / "shard-00001.npy").write_bytes(b"garbage")  # a damaged shard: only it goes back to the engine
    assert torch.equal(remote.image_features(tiny_backbone, data), local.image_features(tiny_backbone, data))
    assert engine.calls[-1] == [1]


# ---- slow: a local Ray cluster ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for the module (2 encoder workers + 1 decoding CPU), shut down at the end."""
    pytest.importorskip("ray.data", reason='needs pip install "vlkit[ray]"')
    from vlkit.features.ray_engine import RayEngine

    owner = RayEngine(workers=2, decode_cpus=1)
    owner.connect()
    yield owner
    owner.close()


@pytest.mark.slow
def test_ray_features_equal_local_and_a_killed_worker_resumes(ray_cluster, tmp_path, tiny_backbone, folder):
    from vlkit.features.ray_engine import RayEngine, RayEngineError

    started = time.perf_counter()
    data = colour_dataset(12, seed=4)  # 48 images = 6 shards of 8
    local = FeatureStore(tmp_path / "local", shard_size=8, batch_size=4, num_workers=0)
    on_ray = FeatureStore(tmp_path / "ray", shard_size=8, batch_size=4, engine=RayEngine(workers=2))
    for view in (0, 1):  # the eval transform and a seeded augmented view
        ray_feats = on_ray.image_features(tiny_backbone, data, view)
        assert on_ray.engine.last_stats["rows"] == 48 and on_ray.engine.last_stats["shards"] == 6
        a, b = local.entry_dir(tiny_backbone, data, view), on_ray.entry_dir(tiny_backbone, data, view)
        assert torch.equal(ray_feats, local.image_features(tiny_backbone, data, view))  # bit-equal on CPU
        assert a.relative_to(local.root) == b.relative_to(on_ray.root)
        assert json.loads((a / "meta.json").read_text()) == json.loads((b / "meta.json").read_text())  # same sha256s

    # A worker dies (os._exit) when it meets a row of the last shard: one line; the shards written stay.
    flag = tmp_path / "failed-once"
    crashing = FeatureStore(tmp_path / "crash", shard_size=8, batch_size=4,
                            engine=RayEngine(workers=2, fail_once=(str(flag), 45)))
    with pytest.raises(RayEngineError) as failure:
        crashing.image_features(tiny_backbone, data)
    message = str(failure.value)
    assert flag.exists() and "\n" not in message and "run the same command again" in message, message
    entry = crashing.entry_dir(tiny_backbone, data, 0)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["complete"] is False and "5" not in meta["shards"]
    finished = {s: os.stat(entry / f"shard-{int(s):05d}.npy").st_mtime_ns for s in meta["shards"]}
    assert not list(entry.glob("*.tmp"))

    resumed = FeatureStore(tmp_path / "crash", shard_size=8, batch_size=4, engine=RayEngine(workers=2))
    feats = resumed.image_features(tiny_backbone, data)
    assert resumed.engine.last_stats["shards"] == 6 - len(finished)  # only the missing shards went to Ray
    assert resumed.engine.last_stats["rows"] == 48 - 8 * len(finished)
    assert {s: os.stat(entry / f"shard-{int(s):05d}.npy").st_mtime_ns for s in finished} == finished
    assert torch.equal(feats, local.image_features(tiny_backbone, data))
    assert resumed.misses == 1 and resumed.image_features(tiny_backbone, data) is not None and resumed.hits == 1

    # A copy in another process (a spawned bench cell) joins this cluster and never shuts it down.
    copy = pickle.loads(pickle.dumps(ray_cluster))
    assert ray_cluster._started and not copy._started and copy.address and ":" in copy.address

    # The CLI on the same cluster: `vlkit features extract --engine ray` writes the local path's entry.
    args = ["features", "extract", "--model", "test-tiny", "--data", str(folder), "--split", "all"]
    result = runner.invoke(app, [*args, "--engine", "ray", "--workers", "1", "--output", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["engine"] == "ray" and record["ray"]["rows"] == 12 and record["cache_misses"] == 1
    again = runner.invoke(app, [*args, "--output", str(tmp_path / "l.json")])  # local engine: a cache hit
    assert json.loads((tmp_path / "l.json").read_text())["cache_hits"] == 1, again.output
    print(f"ray engine test body: {time.perf_counter() - started:.1f} s")
