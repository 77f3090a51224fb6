"""`vlkit serve`: a real server in a subprocess driven by a real HTTP client (httpx).

Predict, add, concurrent adds (none lost), refusals over every limit, and a fitted run that
refuses examples. The kill -9 test is in test_serve_kill.py, the browser test in
test_serve_browser.py.
"""
from __future__ import annotations

import threading

import pytest
import torch

httpx = pytest.importorskip("httpx", reason="the service tests need httpx (pip install 'vlkit[test]')")
pytest.importorskip("fastapi", reason="vlkit serve needs the serve extra (pip install 'vlkit[serve]')")

from conftest import COLOURS  # noqa: E402
from serve_helpers import Server, png_bytes  # noqa: E402
from vlkit.apps import upgrade  # noqa: E402

CLASSES = list(COLOURS)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_backbone):
    """An upgrade run (test-tiny, the four colours) served with small limits: 256 KiB, 4 images, 100x100 pixels."""
    run = tmp_path_factory.mktemp("serve") / "run"
    upgrade.init_run(run, "test-tiny", CLASSES, backbone=tiny_backbone, retune=False)
    server = Server(run, "--max-upload-mb", "0.25", "--max-batch", "4", "--max-pixels", "10000",
                    "--max-side", "100", "--max-request-pixels", "25000").wait_ready()
    server.run = run
    yield server
    server.stop()


def files(*images: bytes, name: str = "img.png") -> list:
    return [("files", (f"{i}-{name}", data, "image/png")) for i, data in enumerate(images)]


def test_predict_matches_the_library(server, tiny_backbone):
    images = [png_bytes(COLOURS["red"], seed=1), png_bytes(COLOURS["blue"], seed=2)]
    answer = httpx.post(f"{server.url}/predict", files=files(*images), data={"top_k": "3"}, timeout=60)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    assert [row["name"] for row in rows] == ["0-img.png", "1-img.png"]
    assert all(len(row["top"]) == 3 for row in rows)
    # the same images through the library: softmax of the run's Tip-Adapter logits on test-tiny features
    import io

    from PIL import Image

    method = upgrade.load_method(server.run)
    feats = tiny_backbone.encode_pil([Image.open(io.BytesIO(b)).convert("RGB") for b in images])
    probs = method.logits(feats).softmax(-1)  # (2, C)
    for row, expected in zip(rows, probs):
        best = int(expected.argmax())
        assert row["top"][0]["class"] == CLASSES[best]
        assert row["top"][0]["probability"] == pytest.approx(float(expected[best]), abs=1e-5)
        assert [g["probability"] for g in row["top"]] == sorted((g["probability"] for g in row["top"]), reverse=True)


def test_health_classes_and_docs(server):
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["upgradeable"] is True and health["classes"] == 4
    classes = httpx.get(f"{server.url}/classes").json()
    assert classes["classes"] == CLASSES and set(classes["per_class"]) == set(CLASSES)
    assert classes["limits"]["max_batch"] == 4
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/predict", "/examples", "/classes", "/health"} <= set(schema["paths"])
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and 'id="file-input"' in page.text
    assert httpx.get(f"{server.url}/heldout").status_code == 404  # started without --heldout


@pytest.mark.parametrize("route", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_outside(server, route):
    """Swagger UI and ReDoc work offline: every script, style and icon they reference is on this server."""
    import re

    page = httpx.get(f"{server.url}{route}")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    external = re.findall(r"https?://[^\s\"'<>]+", page.text)
    assert not external, f"{route} references external URLs: {external}"
    assets = re.findall(r"(?:src|href)=[\"']([^\"']+)[\"']", page.text)
    assets += re.findall(r"(?:url|redoc_js_url)[\"']?\s*[:=]\s*[\"'](/[^\"']+)[\"']", page.text)
    local = sorted({a for a in assets if a.startswith("/docs/assets/")})
    assert len(local) >= 2, f"{route} references no local assets: {assets}"
    for asset in local:
        answer = httpx.get(f"{server.url}{asset}")
        assert answer.status_code == 200 and len(answer.content) > 100, asset
    assert httpx.get(f"{server.url}/docs/assets/../../run.json").status_code == 404  # no path out of the assets


def test_concurrent_adds_none_lost(server):
    before = httpx.get(f"{server.url}/classes").json()
    acknowledged = {name: 0 for name in CLASSES}
    lock, failures = threading.Lock(), []

    def client(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for step in range(5):
                label = CLASSES[(worker + step) % len(CLASSES)]
                count = 1 + (worker + step) % 2  # one or two images per add
                images = [png_bytes(COLOURS[label], seed=1000 * worker + 10 * step + i) for i in range(count)]
                answer = http.post("/examples", files=files(*images), data={"label": label})
                if answer.status_code != 200:
                    failures.append(answer.text)
                    continue
                assert answer.json()["added"] == count
                with lock:
                    acknowledged[label] += count
                http.post("/predict", files=files(images[0]))  # predictions interleave with the adds

    threads = [threading.Thread(target=client, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    after = httpx.get(f"{server.url}/classes").json()
    expected = {name: before["per_class"][name] + acknowledged[name] for name in CLASSES}
    assert after["per_class"] == expected
    assert after["examples"] == before["examples"] + sum(acknowledged.values())
    meta = upgrade.read_meta(server.run)  # on disk too: the cache holds exactly the acknowledged examples
    assert meta["per_class"] == expected and upgrade.load_method(server.run).cache_size == meta["examples"]
    assert sorted(p.name for p in server.run.glob("state-*")) == [meta["state"]]


def test_an_add_from_another_process_is_served(server, tiny_backbone):
    """`vlkit upgrade add` on the served run (here: this test process) shows in the server's next answer."""
    import io

    from PIL import Image

    before = httpx.get(f"{server.url}/classes").json()["per_class"]["yellow"]
    image = Image.open(io.BytesIO(png_bytes(COLOURS["yellow"], seed=99))).convert("RGB")
    upgrade.add_features(server.run, tiny_backbone.encode_pil([image]), "yellow", fingerprint=tiny_backbone.fingerprint)
    assert httpx.get(f"{server.url}/classes").json()["per_class"]["yellow"] == before + 1
    answer = httpx.post(f"{server.url}/examples", files=files(png_bytes(seed=98)), data={"label": "yellow"}, timeout=60)
    assert answer.json()["per_class"]["yellow"] == before + 2  # the server's add builds on the other's


def test_limits_and_non_images_are_refused_with_one_line(server):
    def refused(status: int, pattern: str, **request) -> None:
        answer = httpx.post(f"{server.url}/{request.pop('route', 'predict')}", timeout=60, **request)
        assert answer.status_code == status, answer.text
        message = answer.json()["error"]
        assert "\n" not in message
        assert __import__("re").search(pattern, message), message

    before = upgrade.read_meta(server.run)
    big = bytes(300 * 1024)  # 300 KiB: over the 256 KiB body limit
    refused(413, r"over this server's limit of 0\.25 MiB.*--max-upload-mb", files=files(big))
    refused(413, r"120x120 pixels.*at most 10,000 pixels", files=files(png_bytes(size=120)))
    refused(413, r"5 images in one request.*at most 4", files=files(*[png_bytes(seed=i) for i in range(5)]))
    refused(413, r"the 4 images hold 32,400 pixels together.*at most 25,000",
            files=files(*[png_bytes(seed=i, size=90) for i in range(4)]))
    refused(415, r"'0-notes.txt' is not an image; send PNG, JPEG", files=[("files", ("0-notes.txt", b"hello", "image/png"))])
    refused(415, r"damaged image", files=files(png_bytes()[:60]))
    refused(422, r"files: Field required", data={"top_k": "2"})
    refused(422, r"top_k: .*greater than or equal to 1", files=files(png_bytes()), data={"top_k": "0"})
    refused(422, r"unknown label '\.\./\.\./x'.*red, green, blue, yellow", route="examples",
            files=files(png_bytes()), data={"label": "../../x"})
    refused(415, r"not an image", route="examples", files=[("files", ("a.png", b"GIF89a-not", "image/png"))],
            data={"label": "red"})
    after = upgrade.read_meta(server.run)
    assert after["examples"] == before["examples"] and after["state"] == before["state"]  # nothing was added


def test_a_bomb_is_refused_from_its_header(monkeypatch):
    """A 5000x5000 PNG of zeros is 25 KB on the wire and 75 MB decoded: refused before any pixel is decoded."""
    import io

    from PIL import Image

    from vlkit.apps.serve import uploads

    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000
    decoded = []
    original = uploads._decoded
    monkeypatch.setattr(uploads, "_decoded", lambda *args: decoded.append(args) or original(*args))
    with pytest.raises(uploads.Refused, match=r"'bomb.png' is 5000x5000 pixels; .*at most 16,000,000") as caught:
        uploads.decode_images([(png_bytes(), "ok.png"), (buffer.getvalue(), "bomb.png")], uploads.Limits())
    assert caught.value.status == 413 and decoded == []  # not even the good image was decoded
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"/>'
    with pytest.raises(uploads.Refused, match="'a.svg' is not an image"):
        uploads.decode_images([(svg, "a.svg")], uploads.Limits())
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    with pytest.raises(uploads.Refused, match="'a.tif' is a TIFF file; send PNG, JPEG, GIF, BMP, WEBP"):
        uploads.decode_images([(tiff.getvalue(), "a.tif")], uploads.Limits())


def test_request_values_never_become_paths(server):
    listing = sorted(p.name for p in server.run.parent.rglob("*"))
    answer = httpx.post(f"{server.url}/examples", files=[("files", ("../../../evil.png", png_bytes(), "image/png"))],
                        data={"label": "green"}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert httpx.get(f"{server.url}/heldout/tryouts/..%2F..%2Frun.json").status_code in (404, 422)
    names = sorted(p.name for p in server.run.parent.rglob("*"))
    assert not [n for n in names if "evil" in n]
    assert len(names) == len(listing)  # a new state folder replaced the old one; nothing else appeared


def test_fitted_run_predicts_and_refuses_examples(tmp_path, tiny_backbone):
    """A `vlkit fit --run-dir` run (here Tip-Adapter fitted on arrays) serves predictions; adds get 409."""
    from fastapi.testclient import TestClient

    from vlkit.apps.serve.app import create_app
    from vlkit.apps.serve.runs import ServedRun
    from vlkit.caches.tip_adapter import TipAdapter
    from vlkit.features.text_weights import zero_shot_weights
    from vlkit.io import atomic_write_json

    weights = zero_shot_weights(tiny_backbone, CLASSES, ["a photo of a {}."])  # (4, D)
    keys = torch.nn.functional.normalize(torch.randn(8, weights.shape[1]), dim=-1)
    method = TipAdapter(alpha=1.0, beta=5.5).fit(keys, torch.arange(8) % 4, weights)
    run = tmp_path / "fitted"
    method.save(run / "method", backbone_fingerprint=tiny_backbone.fingerprint)
    atomic_write_json(run / "run.json", {"model": "test-tiny", "pretrained": None, "data": "colours",
                                         "method": "tip-adapter", "shots": 2, "seed": 1})
    client = TestClient(create_app(ServedRun(run, backbone=tiny_backbone)))
    assert client.get("/health").json()["upgradeable"] is False
    answer = client.post("/predict", files=files(png_bytes()), data={"top_k": "2"})
    assert answer.status_code == 200 and len(answer.json()["predictions"][0]["top"]) == 2
    refused = client.post("/examples", files=files(png_bytes()), data={"label": "red"})
    assert refused.status_code == 409
    assert "fitted by `vlkit fit` (tip-adapter) and takes no examples" in refused.json()["error"]
    assert sorted(p.name for p in run.rglob("*")) == ["config.json", "method", "run.json", "state.safetensors"]


def test_a_failed_commit_leaves_the_run_and_the_served_model_as_before(tmp_path, tiny_backbone, monkeypatch):
    """A crash between writing the new state and swapping run.json: run.json still names the old state."""
    from fastapi.testclient import TestClient

    from vlkit.apps.serve.app import create_app
    from vlkit.apps.serve.runs import ServedRun

    run = tmp_path / "run"
    upgrade.init_run(run, "test-tiny", CLASSES, backbone=tiny_backbone)
    served = ServedRun(run, backbone=tiny_backbone)
    client = TestClient(create_app(served))
    assert client.post("/examples", files=files(png_bytes()), data={"label": "red"}).status_code == 200
    before = upgrade.read_meta(run)

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(upgrade, "atomic_write_json", crash)
    failed = client.post("/examples", files=files(png_bytes(seed=3)), data={"label": "blue"})
    assert failed.status_code == 503 and "disk full" in failed.json()["error"]
    assert "nothing was added" in failed.json()["error"]
    monkeypatch.undo()
    assert upgrade.read_meta(run) == before and upgrade.load_method(run).cache_size == 1
    assert client.get("/classes").json()["per_class"]["blue"] == 0
    assert client.post("/examples", files=files(png_bytes(seed=4)), data={"label": "blue"}).json()["examples"] == 2
    assert sorted(p.name for p in run.glob("state-*")) == [upgrade.read_meta(run)["state"]]


def held_first_call(call):
    """``call`` wrapped so that its first invocation waits until ``release`` is set: (wrapper, first_running,
    release); later invocations run at once."""
    first_running, release = threading.Event(), threading.Event()

    def wrapper(*args):
        if not first_running.is_set():
            first_running.set()
            release.wait(30)
        return call(*args)

    return wrapper, first_running, release


def test_concurrent_predictions_share_one_forward_pass(tmp_path, tiny_backbone):
    """Requests waiting while the model runs are answered by the next single batch, each with its own rows."""
    import io

    from PIL import Image

    from vlkit.apps.serve.batching import PredictionBatcher
    from vlkit.apps.serve.runs import ServedRun

    run = tmp_path / "run"
    upgrade.init_run(run, "test-tiny", CLASSES, backbone=tiny_backbone)
    served = ServedRun(run, backbone=tiny_backbone)
    images = [Image.open(io.BytesIO(png_bytes(rgb, seed=i))).convert("RGB")
              for i, rgb in enumerate(list(COLOURS.values()) * 2)]
    expected = [served.predict([image], top_k=2)[0] for image in images]  # one at a time, no batching
    served.probabilities, first_running, release = held_first_call(served.probabilities)
    batcher = PredictionBatcher(served)
    answers: dict[int, list] = {}
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, batcher.predict([images[i]], 2)[0]))
               for i in range(len(images))]
    threads[0].start()
    assert first_running.wait(30)
    for thread in threads[1:]:
        thread.start()
    while batcher._queue.qsize() < len(images) - 1:  # all seven others queued behind the running one
        threading.Event().wait(0.01)
    release.set()
    for thread in threads:
        thread.join(30)
    assert batcher.batches == 2  # the first request alone, then the seven waiting ones together
    for i, rows in answers.items():
        assert [g["class"] for g in rows] == [g["class"] for g in expected[i]]
        assert [g["probability"] for g in rows] == pytest.approx([g["probability"] for g in expected[i]], abs=1e-5)


def test_concurrent_adds_share_one_commit(tmp_path, tiny_backbone):
    """Adds waiting while a commit runs go into the next single commit (one retune, one state), and each is
    acknowledged only after it: the run then equals separate adds in arrival order, alpha/beta included."""
    import io

    from PIL import Image

    from vlkit.apps.serve.runs import ServedRun

    adds = [(label, png_bytes(COLOURS[label], seed=i)) for i, label in enumerate(CLASSES * 3)]  # 12 adds, 3 per class
    separate, grouped = tmp_path / "separate", tmp_path / "grouped"
    for run in (separate, grouped):
        upgrade.init_run(run, "test-tiny", CLASSES, backbone=tiny_backbone)  # retuning on (from 3 per class)
    features = [tiny_backbone.encode_pil([Image.open(io.BytesIO(data)).convert("RGB")]) for _, data in adds]
    for feats, (label, _) in zip(features, adds):  # the reference: one commit per add, in order
        upgrade.add_features(separate, feats, label, fingerprint=tiny_backbone.fingerprint)
    served = ServedRun(grouped, backbone=tiny_backbone)
    served._commit, first_running, release = held_first_call(served._commit)
    acknowledged = []
    served.inputs = lambda images: features[int(images[0])]  # the images are indices into the encoded features
    writer = served._writer()
    answers: dict[int, dict] = {}

    def add(i: int) -> None:
        answers[i] = served.add([str(i)], adds[i][0])
        acknowledged.append(i)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(len(adds))]
    threads[0].start()
    assert first_running.wait(30)
    for i, thread in enumerate(threads[1:], start=1):
        thread.start()
        while writer._queue.qsize() < i:  # queued in this order behind the running commit
            threading.Event().wait(0.005)
    assert acknowledged == []  # nobody is answered before the commit holding their add is on disk
    release.set()
    for thread in threads:
        thread.join(30)
    assert writer.commits == 2  # the first add alone, then the eleven waiting ones together
    assert sorted(answers) == list(range(len(adds))) and all(a["added"] == 1 for a in answers.values())
    assert {answers[i]["examples"] for i in range(1, len(adds))} == {len(adds)}
    meta, reference = upgrade.read_meta(grouped), upgrade.read_meta(separate)
    assert meta["per_class"] == reference["per_class"] and meta["examples"] == len(adds)
    assert (meta["alpha"], meta["beta"]) == (reference["alpha"], reference["beta"])
    assert [h["label"] for h in meta["history"]] == [h["label"] for h in reference["history"]]
    method, expected = upgrade.load_method(grouped), upgrade.load_method(separate)
    assert torch.equal(method.keys_, expected.keys_) and torch.equal(method.labels_, expected.labels_)
    assert sorted(p.name for p in grouped.glob("state-*")) == [meta["state"]]


def test_cli_refuses_what_it_cannot_serve_in_one_line(tmp_path, tiny_backbone):
    from typer.testing import CliRunner

    from vlkit.cli.main import app

    runner = CliRunner()
    assert runner.invoke(app, ["serve", "--help"]).exit_code == 0
    result = runner.invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 1 and "is not a run folder (no run.json)" in result.output
    assert "vlkit upgrade init" in result.output and "Traceback" not in result.output
    run = tmp_path / "run"
    upgrade.init_run(run, "test-tiny", CLASSES, backbone=tiny_backbone)
    result = runner.invoke(app, ["serve", str(run), "--heldout", "fashion-mnist-mini"])
    assert result.exit_code == 1, result.output
    assert "held-out data fashion-mnist-mini has classes" in " ".join(result.output.split())


def test_a_fitted_image_tower_method_is_served_batched(tmp_path, tiny_backbone, colour_task):
    """VPT reads preprocessed images, not features: the batcher stacks them; rows equal the method's own logits."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from vlkit.apps.serve.app import create_app
    from vlkit.apps.serve.runs import ServedRun
    from vlkit.io import atomic_write_json
    from vlkit.methods.registry import method_class

    method = method_class("vpt-shallow")(iters_per_shot=1, val_checks=2, batch_size=8, tokens=2).fit(colour_task)
    run = tmp_path / "fitted"
    method.save(run / "method", backbone_fingerprint=tiny_backbone.fingerprint)
    atomic_write_json(run / "run.json", {"model": "test-tiny", "data": "colours", "method": "vpt-shallow"})
    served = ServedRun(run, backbone=tiny_backbone)
    assert served.method.input_kind == "images"
    images = [png_bytes(rgb, seed=i) for i, rgb in enumerate(COLOURS.values())]
    answer = TestClient(create_app(served)).post("/predict", files=files(*images), data={"top_k": "1"})
    assert answer.status_code == 200, answer.text
    pixels = torch.stack([tiny_backbone.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
    expected = method.logits(pixels).softmax(-1)  # (4, C) the fitted method on the same preprocessed images
    for row, probs in zip(answer.json()["predictions"], expected):
        assert row["top"][0]["class"] == CLASSES[int(probs.argmax())]
        assert row["top"][0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
