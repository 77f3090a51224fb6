"""kill -9 of `vlkit serve` during a burst of adds, then a restart: every acknowledged add is there, nothing is half-written.

Two server starts (about 10 s each on a busy 2-core machine): marked slow; CI runs it.
"""
from __future__ import annotations

import io
import threading
import time

import pytest
import torch
from PIL import Image

httpx = pytest.importorskip("httpx", reason="the service tests need httpx (pip install 'vlkit[test]')")
pytest.importorskip("fastapi", reason="vlkit serve needs the serve extra (pip install 'vlkit[serve]')")

from conftest import COLOURS  # noqa: E402
from serve_helpers import Server, png_bytes  # noqa: E402
from vlkit.apps import upgrade  # noqa: E402

CLASSES = list(COLOURS)
CLIENTS = 4


@pytest.mark.slow
def test_kill_9_during_adds_then_restart(tmp_path, tiny_backbone):
    run = tmp_path / "run"
    upgrade.init_run(run, "test-tiny", CLASSES, backbone=tiny_backbone)  # retuning on: every add rewrites alpha/beta
    server = Server(run).wait_ready()
    acknowledged: list[tuple[str, bytes]] = []
    lock, stop = threading.Lock(), threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            step = 0
            while not stop.is_set():
                label = CLASSES[(worker + step) % len(CLASSES)]
                image = png_bytes(COLOURS[label], seed=10_000 * worker + step)
                step += 1
                try:
                    answer = http.post("/examples", files=[("files", ("x.png", image, "image/png"))],
                                       data={"label": label})
                except httpx.HTTPError:  # the server died under this request: not acknowledged
                    return
                if answer.status_code == 200:
                    with lock:
                        acknowledged.append((label, image))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while len(acknowledged) < 24 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.kill()  # mid-burst: requests are in flight
    stop.set()
    for thread in threads:
        thread.join()
    assert len(acknowledged) >= 24

    # on disk, before any restart: run.json names a whole state holding every acknowledged image
    meta = upgrade.read_meta(run)
    method = upgrade.load_method(run, meta)
    assert method.cache_size == meta["examples"] == sum(meta["per_class"].values())
    assert meta["examples"] == sum(entry["added"] for entry in meta["history"])
    assert len(acknowledged) <= meta["examples"] <= len(acknowledged) + CLIENTS  # at most the in-flight ones more
    feats = tiny_backbone.encode_pil([Image.open(io.BytesIO(data)).convert("RGB") for _, data in acknowledged])
    similarity = torch.nn.functional.normalize(feats, dim=-1) @ torch.nn.functional.normalize(method.keys_, dim=-1).T
    best = similarity.max(dim=1)  # each acknowledged image's nearest cache key: itself
    assert float(best.values.min()) > 0.9999
    labels = [CLASSES.index(label) for label, _ in acknowledged]
    assert method.labels_[best.indices].tolist() == labels

    restarted = Server(run).wait_ready()
    try:
        info = httpx.get(f"{restarted.url}/classes").json()
        assert info["examples"] == meta["examples"] and info["per_class"] == meta["per_class"]
        answer = httpx.post(f"{restarted.url}/examples", files=[("files", ("y.png", png_bytes(seed=7), "image/png"))],
                            data={"label": "red"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["examples"] == meta["examples"] + 1
        # the next commit cleans up whatever the kill left: one state folder, no temp folder of a dead writer
        assert sorted(p.name for p in run.glob("state-*")) == [upgrade.read_meta(run)["state"]]
        assert list(run.glob(".state-*")) == []
    finally:
        restarted.stop()
