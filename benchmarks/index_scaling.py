"""Cache inference at 10k / 100k (/ 1M) entries: exact search against IVF and HNSW, side by side.

For each cache size the same keys (clustered, normalised, ``--dim`` wide, labelled by
cluster like a large few-shot or upgrade cache) go into three ``vlkit.features.index.VectorIndex``
kinds: exact (flat inner product), IVF (nlist = 4 sqrt(N), nprobe 32) and HNSW (M 32,
efSearch 128). For each it reports build seconds, search latency per query (a batch of
``--queries`` and single queries), index memory (estimate) and the process memory growth
while building, recall@k against exact, and the Tip-Adapter cache logits computed from
the top-k affinities: latency and top-1 agreement with the dense logits over all entries.
The dense path (one (M, N) matmul, no index) is timed too. Writes
benchmarks/results/index_scaling.json.

    python benchmarks/index_scaling.py                   # 10k and 100k (~5 min on 1 core)
    python benchmarks/index_scaling.py --with-1m         # adds 1M entries (HNSW build: long)
    python benchmarks/index_scaling.py --sizes 1000000 --kinds exact,ivf --nlist 1024 --nprobe 16 \\
        --queries 200
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from cache_search import provenance  # the one copy of the result-file keys (run as a script)
from vlkit.caches.common import Affinity, LabelValues, cache_logits
from vlkit.protocols.scoring import _rss_bytes
from vlkit.features.index import VectorIndex

RESULTS = Path(__file__).resolve().parent / "results"
BETA = 5.5


def data(n: int, dim: int, clusters: int, queries: int, seed: int = 0):
    """Keys (n, dim), their cluster labels, and queries (queries, dim) from the same clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, n + queries)
    x = centres[labels] + rng.standard_normal((n + queries, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x[:n]), torch.from_numpy(labels[:n]), np.ascontiguousarray(x[n:])


def best_of(fn, repeats: int = 3) -> float:
    """Fastest wall seconds of ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def single_latency(index: VectorIndex, queries: np.ndarray, k: int, count: int = 50) -> float:
    """Median seconds for one query at a time."""
    times = []
    for q in queries[:count]:
        start = time.perf_counter()
        index.search(q[None], k)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run_size(n: int, args) -> list[dict]:
    keys, labels, queries = data(n, args.dim, args.clusters, args.queries)
    values = LabelValues(labels, args.clusters)  # one-hot values kept as (N,) labels
    q = torch.from_numpy(queries)
    keys_t = torch.from_numpy(keys)
    dense_logits = cache_logits(Affinity(q @ keys_t.T), BETA, values)  # (Q, C)
    dense_pred = dense_logits.argmax(-1)
    dense_s = best_of(lambda: cache_logits(Affinity(q @ keys_t.T), BETA, values))
    rows = [{"entries": n, "kind": "dense (no index)", "build_s": 0.0, "ms_per_query_batch": 1000 * dense_s / len(q),
             "ms_single_query": None, "index_mb": keys.nbytes / 2 ** 20,
             "query_batch_mb": len(q) * n * 4 / 2 ** 20, "recall_at_k": 1.0, "top1_agreement": 1.0,
             "cache_logits_ms_per_query": 1000 * dense_s / len(q)}]
    exact = None
    kinds = [("exact", {}), ("ivf", {"nprobe": args.nprobe, "nlist": args.nlist}),
             ("hnsw", {"ef_search": args.ef_search})]
    for kind, options in [k for k in kinds if k[0] == "exact" or k[0] in args.kinds.split(",")]:
        gc.collect()
        rss = _rss_bytes()
        start = time.perf_counter()
        index = VectorIndex(args.dim, kind, **options).add(keys)
        build = time.perf_counter() - start
        grown = max(0, _rss_bytes() - rss)
        exact = exact or index
        batch_s = best_of(lambda: index.search(queries, args.k))
        scores, ids = index.search(queries, args.top_k)
        sparse = Affinity(scores, ids)
        logits_s = best_of(lambda: cache_logits(Affinity(*index.search(queries, args.top_k)), BETA, values))
        agree = float((cache_logits(sparse, BETA, values).argmax(-1) == dense_pred).float().mean())
        recall = 1.0 if index is exact else index.recall(queries, args.k, exact)
        rows.append({"entries": n, "kind": kind, **{k: v for k, v in index.describe().items() if v is not None},
                     "build_s": build, "ms_per_query_batch": 1000 * batch_s / len(queries),
                     "ms_single_query": 1000 * single_latency(index, queries, args.k),
                     "index_mb": index.memory_bytes() / 2 ** 20, "rss_growth_mb": grown / 2 ** 20,
                     "recall_at_k": recall, "top1_agreement": agree,
                     "cache_logits_ms_per_query": 1000 * logits_s / len(queries)})
        r = rows[-1]
        print(f"{n:>8} {kind:<6} build {build:7.2f} s | search {r['ms_per_query_batch']:7.3f} ms/q (batch), "
              f"{r['ms_single_query']:7.3f} ms single | {r['index_mb']:7.1f} MB | recall@{args.k} {recall:.3f} | "
              f"cache logits top-{args.top_k}: {r['cache_logits_ms_per_query']:6.3f} ms/q, "
              f"top-1 agrees with dense {agree:.3f}", flush=True)
        if index is not exact:
            del index
    print(f"{n:>8} dense  (no index) cache logits {rows[0]['cache_logits_ms_per_query']:.3f} ms/q, "
          f"(Q, N) affinities {rows[0]['query_batch_mb']:.1f} MB per {len(q)}-query batch", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--with-1m", action="store_true", help="also run 1,000,000 entries")
    parser.add_argument("--dim", type=int, default=384, help="feature width (vlkit-mini: 384)")
    parser.add_argument("--clusters", type=int, default=1000, help="classes of the cache")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10, help="recall@k")
    parser.add_argument("--top-k", type=int, default=256, help="affinities kept per query for the cache logits")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default 4 sqrt(N))")
    parser.add_argument("--kinds", default="exact,ivf,hnsw", help="exact is always built first (the recall reference)")
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="1 by default: OpenMP spinning on a shared machine distorts single-query latency")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")] + ([1_000_000] if args.with_1m else [])
    rows = [row for n in sizes for row in run_size(n, args)]
    RESULTS.mkdir(exist_ok=True)
    ratios = {}
    for n in sizes:
        by = {r["kind"]: r for r in rows if r["entries"] == n}
        for kind in ("ivf", "hnsw"):
            if kind in by:
                exact_ms, approx_ms = by["exact"]["ms_single_query"], by[kind]["ms_single_query"]
                ratios[f"exact_over_{kind}_single_query_{n}"] = exact_ms / approx_ms
                ratios[f"{kind}_recall_at_{args.k}_{n}"] = by[kind]["recall_at_k"]
    out = {"benchmark": "index_scaling", **provenance(args.threads),
           "title": f"Cache inference over {args.dim}-d keys: exact vs IVF vs HNSW (vlkit.features.index.VectorIndex)",
           "claim": "approximate indexes answer a single query many times faster than exact search at 100k+ "
                    "entries while keeping recall (reported against exact) and the cache's top-1",
           "ratios": ratios, "faiss": faiss.__version__, "args": vars(args), "rows": rows}
    name = "index_scaling_1m.json" if max(sizes) >= 1_000_000 else "index_scaling.json"
    (RESULTS / name).write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
