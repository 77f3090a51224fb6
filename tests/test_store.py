"""The feature store: cache hits, resume after interruption, corruption and checksums, norms, atomic writes."""
from __future__ import annotations

import pytest
import torch

from vlkit.errors import BackboneMismatchError
from vlkit.features.store import FeatureStore
from conftest import colour_dataset


class CountingBackbone:
    """Wraps a backbone and counts encoded images (optionally failing after N batches)."""

    def __init__(self, backbone, fail_after: int | None = None):
        self._b, self.encoded, self.calls, self.fail_after = backbone, 0, 0, fail_after

    def __getattr__(self, name):
        return getattr(self._b, name)

    def encode_images_with_norms(self, images):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("killed mid-extraction")
        self.encoded += len(images)
        return self._b.encode_images_with_norms(images)


def test_second_extraction_is_a_cache_hit(tmp_path, tiny_backbone):
    store = FeatureStore(tmp_path, shard_size=8, batch_size=8, num_workers=0)
    data = colour_dataset(5)
    counting = CountingBackbone(tiny_backbone)
    first = store.image_features(counting, data)
    assert counting.encoded == 20 and store.misses == 1
    second = store.image_features(counting, data)
    assert counting.encoded == 20 and store.hits == 1  # nothing re-encoded
    assert torch.equal(first, second)
    direct = torch.cat([tiny_backbone.encode_images(torch.stack([tiny_backbone.preprocess(data.image(i))]))
                        for i in range(len(data))])
    assert torch.allclose(first, direct, atol=2e-3)  # stored as float16


def test_interrupted_extraction_resumes_from_finished_shards(tmp_path, tiny_backbone):
    store = FeatureStore(tmp_path, shard_size=8, batch_size=8, num_workers=0)
    data = colour_dataset(10)  # 40 images = 5 shards of 8
    dying = CountingBackbone(tiny_backbone, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        store.image_features(dying, data)
    assert dying.encoded == 24  # three shards finished before the "kill"
    entry = store.entry_dir(tiny_backbone, data, 0)
    assert not list(entry.glob("*.tmp")) and not list(entry.glob(".*"))  # nothing half-written left
    resumed = CountingBackbone(tiny_backbone)
    feats = store.image_features(resumed, data)
    assert resumed.encoded == 16  # only the two missing shards
    fresh = FeatureStore(tmp_path / "fresh", shard_size=8, batch_size=8, num_workers=0)
    assert torch.equal(feats, fresh.image_features(tiny_backbone, data))


def test_corrupted_shard_is_detected_and_rebuilt(tmp_path, tiny_backbone):
    store = FeatureStore(tmp_path, shard_size=8, batch_size=8, num_workers=0)
    data = colour_dataset(4)
    good = store.image_features(tiny_backbone, data)
    shard = store.entry_dir(tiny_backbone, data, 0) / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated
    counting = CountingBackbone(tiny_backbone)
    assert torch.equal(store.image_features(counting, data), good)
    assert counting.encoded == 8  # just that shard
    shard.write_bytes(shard.read_bytes()[:-4] + b"\0\0\0\1")  # same size, other bytes
    assert shard in store.verify()  # checksum catches it; next use re-encodes
    assert torch.equal(store.image_features(tiny_backbone, data), good)


def test_augmented_views_are_cached_deterministic_and_distinct(tmp_path, tiny_backbone):
    data = colour_dataset(2)
    a = FeatureStore(tmp_path / "a", num_workers=0).view_features(tiny_backbone, data, views=2)
    b = FeatureStore(tmp_path / "b", num_workers=0).view_features(tiny_backbone, data, views=2)
    assert a.shape == (8, 3, tiny_backbone.embed_dim)
    assert torch.equal(a, b)
    assert not torch.equal(a[:, 0], a[:, 1]) and not torch.equal(a[:, 1], a[:, 2])


def test_text_features_cached(tmp_path, tiny_backbone):
    store = FeatureStore(tmp_path)
    first = store.text_features(tiny_backbone, ["a red thing", "a blue thing"])
    second = store.text_features(tiny_backbone, ["a red thing", "a blue thing"])
    assert torch.equal(first, second) and store.hits == 1


def test_key_depends_on_backbone_and_features_from_another_backbone_fail(tmp_path, tiny_backbone):
    import vlkit

    other = vlkit.load_backbone("test-tiny", device="cpu")
    with torch.no_grad():
        other.model.visual.proj.mul_(2)
    other._fingerprint = None
    store = FeatureStore(tmp_path)
    data = colour_dataset(1)
    assert store.entry_dir(tiny_backbone, data, 0) != store.entry_dir(other, data, 0)
    with pytest.raises(BackboneMismatchError, match="another backbone"):
        store.check_features(torch.randn(2, tiny_backbone.embed_dim + 3), tiny_backbone)


def test_gpu_jpeg_route_agrees_with_the_pil_route(tmp_path, tiny_backbone, monkeypatch):
    """The store's pipeline route (nvJPEG on CUDA; the same stages on the CPU here) gives the PIL features."""
    import numpy as np
    from PIL import Image

    import vlkit.features.store as store_module
    from vlkit.data import load_image_folder
    from vlkit.features.gpu_decode import jpeg_paths

    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "img" / f"c{c}").mkdir(parents=True)
        for i in range(5):
            smooth = np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # (48, 64, 3)
            Image.fromarray(smooth).save(tmp_path / "img" / f"c{c}" / f"{i}.jpg", quality=95)
    data = load_image_folder(tmp_path / "img")
    monkeypatch.setenv("VLKIT_GPU_DECODE", "0")  # the PIL path
    pil = FeatureStore(tmp_path / "pil", num_workers=0).image_features(tiny_backbone, data)
    calls = []
    real_paths = store_module.pipeline_paths
    monkeypatch.setenv("VLKIT_GPU_DECODE", "1")  # the pipeline: the default for JPEG files, on the CPU too
    monkeypatch.setattr(store_module, "pipeline_paths", lambda b, d, s, e: calls.append(s) or real_paths(b, d, s, e))
    routed = FeatureStore(tmp_path / "gpu", num_workers=0).image_features(tiny_backbone, data)
    assert calls == [0] and jpeg_paths(data) is not None
    assert torch.nn.functional.cosine_similarity(pil, routed).min() >= 0.99


def test_key_changes_with_the_preprocessing_alone(tmp_path, tiny_backbone):
    """Same weights, another preprocessing config: other entries (eval and augmented views)."""
    from dataclasses import asdict, replace

    import open_clip

    import vlkit
    from vlkit.backbones import Backbone

    squashed = vlkit.load_backbone("test-tiny", device="cpu")
    cfg = replace(squashed.preprocess_cfg, resize_mode="squash", interpolation="bilinear")
    open_clip.set_model_preprocess_cfg(squashed.model, asdict(cfg))
    squashed = Backbone(squashed.model, "test-tiny", None, squashed.tokenizer, squashed.device, None)
    assert squashed.fingerprint == tiny_backbone.fingerprint  # the weights are the same
    store = FeatureStore(tmp_path, num_workers=0)
    data = colour_dataset(1)
    for view in (0, 1):
        assert store.entry_dir(tiny_backbone, data, view) != store.entry_dir(squashed, data, view)
    assert store.entry_dir(tiny_backbone, data, 1) != store.entry_dir(tiny_backbone, data, 0)
    again = vlkit.load_backbone("test-tiny", device="cpu")
    assert store.entry_dir(again, data, 0) == store.entry_dir(tiny_backbone, data, 0)  # stable across loads


def test_same_size_garbage_in_a_shard_is_re_encoded_on_the_next_read(tmp_path, tiny_backbone, caplog):
    """The sidecar's sha256 is checked on read: a shard overwritten with bytes of the same size is never served."""
    import os

    import vlkit.features.store as store_module

    store = FeatureStore(tmp_path, shard_size=8, batch_size=8, num_workers=0)
    data = colour_dataset(4)  # 16 images = 2 shards
    good = store.image_features(tiny_backbone, data)
    entry = store.entry_dir(tiny_backbone, data, 0)
    for kind in ("shard", "norms"):
        path = entry / f"{kind}-00001.npy"
        size = path.stat().st_size
        path.write_bytes(path.read_bytes()[:128] + os.urandom(size - 128))  # header kept: np.load would succeed
        assert path.stat().st_size == size
        counting = CountingBackbone(tiny_backbone)
        with caplog.at_level("WARNING", logger="vlkit.features.store"):
            again = store.image_features(counting, data)
        assert "does not match its checksum" in caplog.text
        assert counting.encoded == 8  # that shard only, re-encoded
        assert torch.equal(again, good)
        caplog.clear()
    # a file this process already verified, changed later (a new mtime): checked again, not trusted
    shard = entry / "shard-00000.npy"
    store.image_features(tiny_backbone, data)
    stat = shard.stat()
    shard.write_bytes(bytes(stat.st_size))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    counting = CountingBackbone(tiny_backbone)
    assert torch.equal(store.image_features(counting, data), good) and counting.encoded == 8
    # an unchanged file is hashed once per process, not on every read
    hashed = []
    real = store_module._sha256_file
    store_module._sha256_file = lambda p: hashed.append(p) or real(p)
    try:
        store.image_features(tiny_backbone, data)  # hashes the files re-encoded above, once
        hashed.clear()
        store.image_features(tiny_backbone, data)
    finally:
        store_module._sha256_file = real
    assert hashed == []


def test_norms_give_back_the_raw_features(tmp_path, tiny_backbone):
    """norm * unit feature == the encoder's output before normalising (to float16 storage precision)."""
    store = FeatureStore(tmp_path, num_workers=0)
    data = colour_dataset(2)
    feats, norms = store.views(tiny_backbone, data, views=2)  # (N, 3, D), (N, 3)
    assert feats.shape[:2] == norms.shape == (8, 3)
    assert torch.equal(norms, store.view_norms(tiny_backbone, data, 2))
    assert torch.equal(feats, store.view_features(tiny_backbone, data, 2))
    images = torch.stack([tiny_backbone.preprocess(data.image(i)) for i in range(len(data))])
    with torch.no_grad():
        raw = tiny_backbone.model.encode_image(images).float()  # (N, D), the eval view
    torch.testing.assert_close(norms[:, 0], raw.norm(dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norms[:, 0, None] * feats[:, 0], raw, rtol=2e-3, atol=2e-3 * raw.abs().max().item())
    assert not torch.allclose(norms[:, 0], norms[:, 1])  # each view has its own norms


def test_entries_of_the_old_format_are_never_read(tmp_path, tiny_backbone, monkeypatch):
    """Version 1 (features, no norms) lives under another key: a version-2 store re-encodes, never mixes."""
    import vlkit.features.store as store_module

    data = colour_dataset(2)
    monkeypatch.setattr(store_module, "STORE_VERSION", 1)
    old_dir = FeatureStore(tmp_path, num_workers=0).entry_dir(tiny_backbone, data, 0)
    monkeypatch.setattr(store_module, "STORE_VERSION", 2)
    store = FeatureStore(tmp_path, num_workers=0)
    assert store.entry_dir(tiny_backbone, data, 0) != old_dir
    store.image_features(tiny_backbone, data)
    assert store.misses == 1 and store.verify() == []
