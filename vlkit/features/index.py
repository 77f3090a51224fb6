"""A vector index over FAISS for cache models: exact inner product, IVF or HNSW.

``VectorIndex(dim)`` is exact (``IndexFlatIP``); ``VectorIndex(dim, kind="ivf")`` or
``"hnsw"`` trade recall for speed on large caches, and ``kind="auto"`` picks exact
below ``LARGE`` (100k) entries and IVF above, deciding when the first vectors arrive.
Inputs are checked (2-D, ``dim`` columns, float32, C-contiguous) and a mismatch raises
a :class:`~vlkit.errors.ShapeError` that says how to fix it. A GPU is used when this
FAISS build has one (faiss-gpu), else the CPU. Scores are inner products: L2-normalise
keys and queries first for cosine similarity.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from vlkit.errors import ShapeError, VlkitError
from vlkit.io import atomic_file

log = logging.getLogger("vlkit.features.index")
LARGE = 100_000  # "auto" switches from exact to approximate search at this many entries
KINDS = ("exact", "ivf", "hnsw", "auto")


def gpu_available() -> bool:
    """Whether this FAISS build can place indexes on a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def as_index_array(x: Any, name: str = "vectors") -> np.ndarray:
    """Torch tensor or array-like -> float32 C-contiguous (n, d) numpy (a helper for callers)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


class VectorIndex:
    """Inner-product search over ``dim``-wide float32 vectors (see the module docstring).

    ``nlist`` (IVF cells, default ``4 * sqrt(n)``) and ``nprobe`` (cells visited per
    query) tune IVF; ``hnsw_m`` (graph degree), ``ef_construction`` and ``ef_search``
    tune HNSW. ``device`` is "cpu", "cuda" or None (GPU when available).
    """

    def __init__(self, dim: int, kind: str = "exact", nlist: int | None = None, nprobe: int = 32,
                 hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 128,
                 device: str | None = None) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise VlkitError(f"index dimension must be a positive int, got {dim!r}")
        if kind not in KINDS:
            raise VlkitError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        if device not in (None, "cpu", "cuda"):
            raise VlkitError(f"index device must be 'cpu', 'cuda' or None, got {device!r}")
        if device == "cuda" and not gpu_available():
            raise VlkitError("device='cuda' but this FAISS build has no GPU: install faiss-gpu or use device='cpu'")
        self.dim, self.requested_kind = dim, kind
        self.nlist, self.nprobe = nlist, nprobe
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.use_gpu = device == "cuda" or (device is None and gpu_available())
        self.kind: str | None = None if kind == "auto" else kind
        self._index: Any = None
        self._gpu_res: Any = None

    # ---- checks ---------------------------------------------------------------------
    def _check(self, x: Any, name: str) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            if x.dtype != torch.float32:
                raise ShapeError(f"{name} must be float32, got {x.dtype}: pass x.float()")
            x = x.detach().cpu()
            if not x.is_contiguous():
                raise ShapeError(f"{name} must be C-contiguous: pass x.contiguous()")
            x = x.numpy()
        if not isinstance(x, np.ndarray):
            raise ShapeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
        if x.ndim != 2:
            raise ShapeError(f"{name} must be 2-D (n, {self.dim}), got shape {x.shape}")
        if x.shape[1] != self.dim:
            raise ShapeError(f"{name} have {x.shape[1]} columns but the index holds {self.dim}-d vectors: "
                             "features from another backbone?")
        if x.dtype != np.float32:
            raise ShapeError(f"{name} must be float32, got {x.dtype}: pass x.astype(np.float32)")
        if not x.flags["C_CONTIGUOUS"]:
            raise ShapeError(f"{name} must be C-contiguous (row-major): pass np.ascontiguousarray(x)")
        return x

    # ---- building -----------------------------------------------------------------
    def _build(self, n_first: int) -> None:
        if self.kind is None:  # auto: decided by the first batch
            self.kind = "ivf" if n_first >= LARGE else "exact"
        if self.kind == "exact":
            index = faiss.IndexFlatIP(self.dim)
        elif self.kind == "ivf":
            nlist = self.nlist or max(1, int(4 * math.sqrt(max(n_first, 1))))
            self.nlist = nlist
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.nprobe = self.nprobe
        else:
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        if self.use_gpu and self.kind != "hnsw":  # FAISS has no GPU HNSW
            self._gpu_res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
        self._index = index

    def add(self, vectors: Any) -> "VectorIndex":
        """Append (n, dim) float32 vectors; their ids continue from ``len(self)``."""
        x = self._check(vectors, "vectors")
        if self._index is None:
            self._build(len(x))
        if self.kind == "ivf" and not self._index.is_trained:
            if len(x) < self.nlist:
                raise VlkitError(f"an IVF index with {self.nlist} cells needs at least {self.nlist} vectors in "
                                 f"its first add to train, got {len(x)}: add more at once or use kind='exact'")
            self._index.train(x)
        if len(x):
            self._index.add(x)
        return self

    # ---- queries --------------------------------------------------------------------
    def search(self, queries: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` inner products: (M, k) float32 scores and (M, k) int64 ids, best first.

        With fewer than ``k`` entries, ``k`` is clipped to the index size.
        """
        q = self._check(queries, "queries")
        if k < 1:
            raise VlkitError(f"k must be >= 1, got {k}")
        k = min(k, len(self))
        if k == 0:
            return torch.zeros(len(q), 0), torch.zeros(len(q), 0, dtype=torch.long)
        scores, ids = self._index.search(q, k)
        return torch.from_numpy(scores), torch.from_numpy(ids.astype(np.int64))

    def recall(self, queries: Any, k: int, reference: "VectorIndex") -> float:
        """Recall@k of this index against ``reference`` (an exact index over the same vectors)."""
        _, approx = self.search(queries, k)
        _, exact = reference.search(queries, k)
        hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact))
        return hits / max(exact.numel(), 1)

    def __len__(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def memory_bytes(self) -> int:
        """Approximate bytes held: vectors, plus IVF ids/centroids or HNSW links."""
        n, d = len(self), self.dim
        vectors = n * d * 4
        if self.kind == "ivf":
            return vectors + n * 8 + (self.nlist or 0) * d * 4
        if self.kind == "hnsw":
            return vectors + n * self.hnsw_m * 2 * 4 + n * 8  # level-0 links (2M) + levels
        return vectors

    def describe(self) -> dict:
        """Kind, size and tuning knobs (for logs and benchmark tables)."""
        return {"kind": self.kind or "auto", "entries": len(self), "dim": self.dim, "gpu": self.use_gpu,
                "nlist": self.nlist if self.kind == "ivf" else None,
                "nprobe": self.nprobe if self.kind == "ivf" else None,
                "ef_search": self.ef_search if self.kind == "hnsw" else None}

    # ---- persistence ------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` atomically (temp file, then rename)."""
        if self._index is None:
            raise VlkitError("the index is empty: add vectors before saving it")
        path = Path(path)
        cpu = faiss.index_gpu_to_cpu(self._index) if self._gpu_res is not None else self._index
        with atomic_file(path) as tmp:
            faiss.write_index(cpu, str(tmp))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "VectorIndex":
        """Read an index written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise VlkitError(f"index file not found: {path}")
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise VlkitError(f"{path} is not a readable FAISS index ({str(exc).splitlines()[0]}): "
                             "rebuild it with VectorIndex.save") from None
        if type(raw) is faiss.Index:  # older FAISS: a base wrapper; keep it alive, it owns the memory
            owner, raw = raw, faiss.downcast_index(raw)
            raw.referenced_objects = [owner]
        if isinstance(raw, faiss.IndexIVFFlat):
            out = cls(raw.d, "ivf", nlist=raw.nlist, nprobe=raw.nprobe, device=device)
        elif isinstance(raw, faiss.IndexHNSWFlat):
            out = cls(raw.d, "hnsw", ef_search=raw.hnsw.efSearch, device=device)
        elif isinstance(raw, faiss.IndexFlatIP):
            out = cls(raw.d, "exact", device=device)
        else:
            raise VlkitError(f"{path} holds a {type(raw).__name__}; VectorIndex reads flat, IVF-flat or HNSW-flat")
        if out.use_gpu and out.kind != "hnsw":
            out._gpu_res = faiss.StandardGpuResources()
            raw = faiss.index_cpu_to_gpu(out._gpu_res, 0, raw)
        out._index = raw
        return out

    @classmethod
    def build(cls, vectors: Any, kind: str = "auto", **options: Any) -> "VectorIndex":
        """An index of ``kind`` over ``vectors`` (n, d) in one call."""
        x = vectors if isinstance(vectors, (np.ndarray, torch.Tensor)) else as_index_array(vectors)
        if x.ndim != 2:
            raise ShapeError(f"vectors must be 2-D (n, d), got shape {tuple(x.shape)}")
        return cls(int(x.shape[1]), kind, **options).add(x)
