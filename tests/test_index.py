"""vlkit.features.index.VectorIndex: exact search, IVF/HNSW recall, auto switching, checks, save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vlkit.features.index as index_module
from vlkit.errors import ShapeError, VlkitError
from vlkit.features.index import VectorIndex


def clustered(n: int, d: int = 32, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Normalised float32 vectors around ``clusters`` centres (like image features of classes)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, d))
    return np.ascontiguousarray((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))


def test_exact_search_equals_torch_topk():
    keys, queries = clustered(1000), clustered(20, seed=1)
    index = VectorIndex(32).add(keys)
    scores, ids = index.search(queries, 5)
    expected = torch.from_numpy(queries @ keys.T).topk(5, dim=-1)
    torch.testing.assert_close(scores, expected.values)
    assert torch.equal(ids, expected.indices)
    assert len(index) == 1000 and index.kind == "exact" and index.memory_bytes() == 1000 * 32 * 4
    # torch tensors are accepted; k is clipped to the index size
    s, i = index.search(torch.from_numpy(queries[:2]), 5000)
    assert s.shape == (2, 1000) and i.dtype == torch.int64


@pytest.mark.parametrize("kind,options", [("ivf", {"nlist": 32, "nprobe": 8}), ("hnsw", {"ef_search": 64})])
def test_approximate_indexes_report_high_recall_against_exact(kind, options):
    keys, queries = clustered(5000), clustered(100, seed=2)
    exact = VectorIndex(32).add(keys)
    approx = VectorIndex(32, kind, **options).add(keys)
    assert approx.kind == kind and len(approx) == 5000
    assert approx.recall(queries, 10, exact) >= 0.9
    assert approx.memory_bytes() > exact.memory_bytes()


def test_auto_switches_to_ivf_for_large_caches(monkeypatch):
    monkeypatch.setattr(index_module, "LARGE", 1000)
    assert VectorIndex.build(clustered(999)).kind == "exact"
    big = VectorIndex.build(clustered(3000))
    assert big.kind == "ivf" and big.describe()["nlist"] == int(4 * np.sqrt(3000))


def test_clear_errors_for_wrong_inputs():
    index = VectorIndex(32).add(clustered(10))
    x = clustered(4)
    with pytest.raises(ShapeError, match="another backbone"):
        index.search(clustered(4, d=16), 1)
    with pytest.raises(ShapeError, match="float32"):
        index.add(x.astype(np.float64))
    with pytest.raises(ShapeError, match="float32"):
        index.add(torch.from_numpy(x).half())
    with pytest.raises(ShapeError, match="contiguous"):
        index.add(np.asfortranarray(x))
    with pytest.raises(ShapeError, match="contiguous"):
        index.add(torch.from_numpy(clustered(32)).T)
    with pytest.raises(ShapeError, match="2-D"):
        index.search(x[0], 1)
    with pytest.raises(ShapeError, match="numpy array"):
        index.add(x.tolist())
    with pytest.raises(VlkitError, match="unknown index kind"):
        VectorIndex(32, "lsh")
    with pytest.raises(VlkitError, match="needs at least"):
        VectorIndex(32, "ivf", nlist=64).add(clustered(10))
    with pytest.raises(VlkitError, match="empty"):
        VectorIndex(32).save("/tmp/never-written.faiss")
    assert VectorIndex(32).search(x, 3)[1].shape == (4, 0)


@pytest.mark.parametrize("kind,options", [("exact", {}), ("ivf", {"nlist": 16, "nprobe": 4}), ("hnsw", {})])
def test_save_load_round_trip(kind, options, tmp_path):
    keys, queries = clustered(2000), clustered(10, seed=3)
    index = VectorIndex(32, kind, **options).add(keys)
    path = index.save(tmp_path / "cache.faiss")
    loaded = VectorIndex.load(path)
    assert loaded.kind == kind and len(loaded) == 2000
    for a, b in zip(index.search(queries, 7), loaded.search(queries, 7)):
        assert torch.equal(a, b)
    loaded.add(clustered(5, seed=4))  # ids continue after the loaded ones
    assert len(loaded) == 2005
    (tmp_path / "broken.faiss").write_bytes(b"not an index")
    with pytest.raises(VlkitError, match="not a readable FAISS index"):
        VectorIndex.load(tmp_path / "broken.faiss")


def test_cache_top_k_covering_everything_matches_dense_affinities():
    keys = torch.from_numpy(clustered(300))
    queries = F.normalize(torch.randn(8, 32), dim=-1)
    scores, ids = VectorIndex.build(keys).search(queries, 300)
    dense = queries @ keys.T
    torch.testing.assert_close(torch.zeros_like(dense).scatter(1, ids, scores), dense, rtol=1e-5, atol=1e-6)
