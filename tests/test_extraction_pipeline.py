"""The overlapped extraction pipeline (issue 17 part 1), run on the CPU: the same stage code CUDA runs.

References are the store's PIL path (``VLKIT_GPU_DECODE=0``): open_clip's evaluation
transform and ``Backbone.train_transform`` seeded per (view, image) exactly as the store
seeds them, on PIL images.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from PIL import Image

import vlkit
from vlkit.data import ImageDataset
from vlkit.errors import DataError
from vlkit.features.store import FeatureStore

SIZES = [(40, 30), (30, 40), (64, 48), (40, 30), (23, 57), (90, 30), (30, 40)]  # (width, height)


def _jpegs(folder, sizes=SIZES):
    """Smooth-plus-noise JPEGs (photo-like enough that decode and resampling differences show)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.stack([xx * 255 / w, yy * 255 / h, 127 + 100 * np.sin(xx * 0.3 + yy * 0.2 + i)], -1)
        image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
        path = folder / f"img{i}.jpg"
        Image.fromarray(image).save(path, quality=92)
        paths.append(str(path))
    return paths


def _dataset(paths):
    return ImageDataset([(p, i % 2) for i, p in enumerate(paths)], ["a", "b"], name="pipeline-jpegs")


def _with_cfg(name, **changes):
    """``name`` on the CPU with its preprocessing config changed (same weights)."""
    import open_clip

    from vlkit.backbones import Backbone

    backbone = vlkit.load_backbone(name, device="cpu")
    if not changes:
        return backbone
    cfg = replace(backbone.preprocess_cfg, **changes)
    open_clip.set_model_preprocess_cfg(backbone.model, asdict(cfg))
    return Backbone(backbone.model, name, None, backbone.tokenizer, backbone.device, None)


def _views(tmp_path, backbone, data, route, monkeypatch, views=3, **store_args):
    monkeypatch.setenv("VLKIT_GPU_DECODE", route)
    store = FeatureStore(tmp_path / f"store-{route}", num_workers=0, **store_args)
    return store.views(backbone, data, views)  # (N, 1 + views, D), (N, 1 + views)


@pytest.mark.parametrize("name, changes", [
    ("test-tiny", {}),
    ("vlkit-mini", {}),
    ("test-tiny", {"resize_mode": "longest", "interpolation": "bilinear"}),
    ("test-tiny", {"resize_mode": "squash"}),
])
def test_pipeline_views_agree_with_the_pil_path(tmp_path, monkeypatch, name, changes):
    """View 0 and augmented views 1..3 through the CPU pipeline: cosine >= 0.99 per image and view to PIL."""
    backbone = _with_cfg(name, **changes)
    data = _dataset(_jpegs(tmp_path / "img"))
    pil, pil_norms = _views(tmp_path, backbone, data, "0", monkeypatch, batch_size=4)
    ours, our_norms = _views(tmp_path, backbone, data, "cpu", monkeypatch, batch_size=4)
    assert ours.shape == pil.shape == (len(SIZES), 4, backbone.embed_dim)
    cosine = torch.nn.functional.cosine_similarity(ours, pil, dim=-1)  # (N, 4)
    assert cosine.min() >= 0.99, cosine
    assert torch.allclose(our_norms, pil_norms, rtol=0.02)
    # the views differ from each other (a crop per view and image, not one crop reused)
    assert torch.nn.functional.cosine_similarity(ours[:, 1], ours[:, 2], dim=-1).min() < 0.9999


def test_decode_threads_change_nothing(tmp_path):
    """The CPU decode stage with a thread pool gives the same views as one thread, in order."""
    from vlkit.features.pipeline import view_batches

    backbone = vlkit.load_backbone("test-tiny", device="cpu")
    paths = _jpegs(tmp_path / "img")
    outs = []
    for workers in (0, 3):
        batches = list(view_batches(paths, range(len(paths)), [0, 2], backbone.preprocess_cfg, torch.device("cpu"),
                                    lambda i: None, batch_size=3, workers=workers))
        assert [b.indices for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
        outs.append({v: torch.cat([b.views[v] for b in batches]) for v in (0, 2)})
    assert all(torch.equal(outs[0][v], outs[1][v]) for v in (0, 2))


def test_view_crops_are_the_ones_the_seeded_train_transform_draws():
    """Crop box and flip from a private generator equal torchvision's draws after torch.manual_seed."""
    import torchvision.transforms as T

    from vlkit.backbones.preprocessing import AUGMENT_SCALE
    from vlkit.features.gpu_augment import view_crop, view_seed

    crop = T.RandomResizedCrop(32, scale=AUGMENT_SCALE)
    state = torch.get_rng_state()
    for view in (1, 2, 9):
        for index in range(60):
            for w, h in [(500, 375), (375, 500), (40, 30), (3, 200), (200, 2)]:  # the last two: fallback crops
                torch.manual_seed(view * 1_000_003 + index)
                box = crop.get_params(Image.new("RGB", (w, h)), crop.scale, crop.ratio)
                expected = (*box, bool(torch.rand(1) < 0.5))
                assert view_crop(h, w, view_seed(view, index)) == expected, (view, index, w, h)
    torch.set_rng_state(state)


def test_augmented_view_pixels_match_pil_resampling():
    """Same decoded pixels in: the device-side crop + resize + flip is within one grey level of PIL's."""
    from vlkit.backbones.preprocessing import train_transform
    from vlkit.features.gpu_augment import augment_views

    rng = np.random.default_rng(1)
    cfg = vlkit.load_backbone("test-tiny", device="cpu").preprocess_cfg
    for interpolation in ("bicubic", "bilinear"):
        cfg_i = replace(cfg, interpolation=interpolation)
        arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in [(120, 90), (90, 120), (120, 90)]]
        images = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]
        transform = train_transform(cfg_i)
        std = torch.tensor(cfg_i.std).view(3, 1, 1)
        for batched, view in [(True, 1), (True, 4), (False, 1), (False, 4)]:  # batched: the GPU's matrix products
            ours = augment_views(images, [5, 6, 7], [view], cfg_i, batched=batched)
            for row, (index, array) in enumerate(zip([5, 6, 7], arrays)):
                torch.manual_seed(view * 1_000_003 + index)
                reference = transform(Image.fromarray(array))
                grey_levels = ((ours[view][row] - reference).abs() * std * 255).max()
                assert grey_levels <= 1.01, (interpolation, batched, view, index, float(grey_levels))


def test_one_pass_for_several_views_writes_the_entries_of_separate_passes(tmp_path, monkeypatch):
    """The multi-view pass: same entry folders, same files, equal features as one pass per view."""
    backbone = vlkit.load_backbone("test-tiny", device="cpu")
    data = _dataset(_jpegs(tmp_path / "img"))
    monkeypatch.setenv("VLKIT_GPU_DECODE", "cpu")
    together = FeatureStore(tmp_path / "together", num_workers=0, shard_size=4, batch_size=3)
    apart = FeatureStore(tmp_path / "apart", num_workers=0, shard_size=4, batch_size=3)
    passes = []
    import vlkit.features.store as store_module

    real = store_module.encode_view_chunks
    monkeypatch.setattr(store_module, "encode_view_chunks", lambda b, p, i, views, f, chunks, *a, **k: passes.append(
        (list(views), list(chunks))) or real(b, p, i, views, f, chunks, *a, **k))
    feats, norms = together.views(backbone, data, 3)
    assert passes == [([0, 1, 2, 3], [4, 3])]  # one pass over both shards (4 + 3 images), every view in it
    passes.clear()
    for view in range(4):
        assert torch.equal(apart.image_features(backbone, data, view), feats[:, view])
        assert torch.equal(apart.image_norms(backbone, data, view), norms[:, view])
    assert passes == [([0], [4, 3]), ([1], [4, 3]), ([2], [4, 3]), ([3], [4, 3])]
    for view in range(4):
        a, b = together.entry_dir(backbone, data, view), apart.entry_dir(backbone, data, view)
        assert a.relative_to(tmp_path / "together") == b.relative_to(tmp_path / "apart")  # the same key
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        for path in a.iterdir():
            assert path.read_bytes() == (b / path.name).read_bytes(), path.name
    # a second call reads every entry: no encoding at all
    passes.clear()
    again, _ = together.views(backbone, data, 3)
    assert passes == [] and torch.equal(again, feats)


def test_only_the_missing_views_and_shards_are_encoded(tmp_path, monkeypatch):
    backbone = vlkit.load_backbone("test-tiny", device="cpu")
    data = _dataset(_jpegs(tmp_path / "img"))
    monkeypatch.setenv("VLKIT_GPU_DECODE", "cpu")
    store = FeatureStore(tmp_path / "s", num_workers=0, shard_size=4, batch_size=4)
    store.image_features(backbone, data, 0)
    store.image_features(backbone, data, 2)
    (store.entry_dir(backbone, data, 2) / "shard-00001.npy").unlink()  # view 2 lost its second shard
    passes = []
    import vlkit.features.store as store_module

    real = store_module.encode_view_chunks
    monkeypatch.setattr(store_module, "encode_view_chunks", lambda b, p, i, views, f, chunks, *a, **k: passes.append(
        (i[0], list(views), list(chunks))) or real(b, p, i, views, f, chunks, *a, **k))
    store.views(backbone, data, 2)
    assert passes == [(0, [1], [4]), (4, [1, 2], [3])]  # view 1's first shard alone, then views 1 and 2


def test_a_file_the_decoder_rejects_is_decoded_by_pil(tmp_path, monkeypatch):
    """A JPEG torchvision's decoder refuses (here: a batched and single decode that fail) goes through PIL."""
    import torchvision.io

    backbone = vlkit.load_backbone("test-tiny", device="cpu")
    paths = _jpegs(tmp_path / "img")
    data = _dataset(paths)
    pil, _ = _views(tmp_path, backbone, data, "0", monkeypatch, views=1)
    real = torchvision.io.decode_jpeg
    rejected = paths[2]
    rejected_bytes = open(rejected, "rb").read()

    def picky(data, *args, **kwargs):
        items = data if isinstance(data, list) else [data]
        if any(bytes(d.numpy().tobytes()) == rejected_bytes for d in items):
            raise RuntimeError("decode_jpeg: unsupported")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    ours, _ = _views(tmp_path, backbone, data, "cpu", monkeypatch, views=1)
    assert torch.nn.functional.cosine_similarity(ours, pil, dim=-1).min() >= 0.99


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_a_broken_file_errors_as_the_pil_path_does(tmp_path, monkeypatch, damage):
    """Undecodable, truncated or missing: the same DataError (type and message) as the PIL path."""
    backbone = vlkit.load_backbone("test-tiny", device="cpu")
    paths = _jpegs(tmp_path / "img")
    broken = tmp_path / "img" / "img3.jpg"
    if damage == "garbage":
        broken.write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 3)
    elif damage == "truncated":
        broken.write_bytes(broken.read_bytes()[:200])
    else:
        broken.unlink()
    data = _dataset(paths)
    messages = []
    for route in ("0", "cpu"):
        monkeypatch.setenv("VLKIT_GPU_DECODE", route)
        with pytest.raises(DataError) as caught:
            FeatureStore(tmp_path / route, num_workers=0, batch_size=4).views(backbone, data, 1)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and str(broken) in messages[0]


def _consume_with_timeout(iterator, seconds=10.0):
    """Drain ``iterator`` in a thread; (items, exception) or fail when it does not finish in time."""
    out = {"items": [], "error": None}

    def drain():
        try:
            for item in iterator:
                out["items"].append(item)
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the pipeline hung"
    return out["items"], out["error"]


@pytest.mark.parametrize("where", ["source", "stage0", "stage1"])
def test_an_exception_in_any_stage_reaches_the_consumer(where):
    from vlkit.features.pipeline import run_stages

    boom = ValueError(f"boom in {where}")

    def source():
        for i in range(100):
            if where == "source" and i == 7:
                raise boom
            yield i

    def stage(k):
        def run(item):
            if where == f"stage{k}" and item == 7:
                raise boom
            return item + 1 if k == 0 else item * 10
        return run

    before = threading.active_count()
    items, error = _consume_with_timeout(run_stages(source(), [stage(0), stage(1)], depth=2))
    assert error is boom
    assert items == [(i + 1) * 10 for i in range(len(items))] and len(items) <= 7
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before  # every stage thread ended


def test_queues_are_bounded_and_an_early_stop_ends_every_thread():
    from vlkit.features.pipeline import run_stages

    produced = []

    def source():
        for i in range(1000):
            produced.append(i)
            yield i

    before = threading.active_count()
    stages = run_stages(source(), [lambda x: x, lambda x: x], depth=2)
    first = next(stages)
    time.sleep(0.3)  # let the producers fill every queue
    assert first == 0 and len(produced) <= 12  # 3 queues of 2, one item in each of 3 threads, a few in flight
    stages.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG decode, streams, pinned memory)")
def test_cuda_pipeline_views_agree_with_the_pil_path(tmp_path, monkeypatch):
    backbone = vlkit.load_backbone("test-tiny", device="cuda")
    data = _dataset(_jpegs(tmp_path / "img", SIZES * 10))
    pil, _ = _views(tmp_path, backbone, data, "0", monkeypatch, batch_size=16)
    ours, _ = _views(tmp_path, backbone, data, "1", monkeypatch, batch_size=16)
    assert torch.nn.functional.cosine_similarity(ours, pil, dim=-1).min() >= 0.99
