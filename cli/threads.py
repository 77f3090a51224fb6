"""Thread count and wait policy for the CPU paths, set before torch or faiss is imported.

torch (intra-op), faiss and the BLAS under numpy/scikit-learn each run an OpenMP-style
thread pool. By default their idle threads spin while they wait for work: on an idle
machine that hides a little latency; on a shared one the spinning threads take the
cores that the working threads need, and the same job burns several times the
CPU-seconds (``benchmarks/under_load.py`` measures it). vlkit therefore asks for a
passive wait policy (``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep) unless the user
set one, and ``--threads N`` caps every pool at N threads. Both are environment
variables read when the libraries load, so this runs in the CLI's callback, before any
command imports them; a library already loaded (tests, notebooks) is set directly.
"""
from __future__ import annotations

import os
import sys

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def configure_threads(threads: int | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set the wait policy (unless already set) and, if given, the thread count; returns what was set.

    ``threads`` caps torch's, faiss's and the BLAS pools. ``environ`` defaults to ``os.environ``.
    """
    environ = os.environ if environ is None else environ
    changed: dict[str, str] = {}
    if "OMP_WAIT_POLICY" not in environ:
        changed["OMP_WAIT_POLICY"] = "PASSIVE"
    if threads is not None:
        changed.update({name: str(threads) for name in THREAD_VARIABLES})
    environ.update(changed)
    if threads is not None and environ is os.environ:
        _set_loaded_pools(threads)
    return changed


def _set_loaded_pools(threads: int) -> None:
    """Cap the pools of torch and faiss if they are already imported (their env was read at load)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(threads)
