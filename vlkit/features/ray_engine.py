"""Feature extraction as a Ray Data pipeline: past one process, past one machine.

:class:`RayEngine` is the feature store's second engine (``FeatureStore(engine=...)``,
``--engine ray``). The store decides which of an entry's shards are missing; the engine
encodes only their rows and hands each finished shard back to the store, which writes it
as the local path does (same content key, same files, same ``meta.json`` records):

- a Ray dataset of the missing rows' positions (``ray.data.range``) is mapped to dataset
  indices, and Ray Data *tasks* decode and preprocess them through the store's own
  :class:`~vlkit.features.store._ImageTensors` (the backbone's preprocess for view 0, the
  seeded augmentation for views >= 1), so the pixels are the single-process path's;
- an *actor pool* encodes them, one model per worker (one per GPU with ``num_gpus=1`` when
  the cluster has GPUs, else one per CPU worker); each actor loads the backbone from its
  load spec (name, pretrained, device, precision) and checks the weights' fingerprint
  against the driver's, so a worker with other weights fails instead of mixing features;
- the driver gathers rows by shard and writes a shard as soon as all its rows are in.

A worker that dies fails the run with one line (no silent retries unless ``retries`` says
so); the shards written before it stay, and the next run encodes only the rest. Ray is an
optional extra (``pip install "vlkit[ray]"``) imported only here, only when this engine runs.
"""
from __future__ import annotations

import gc
import logging
import os
import re
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from vlkit.errors import BackboneMismatchError, VlkitError

if TYPE_CHECKING:  # pragma: no cover
    from vlkit.backbones import Backbone
    from vlkit.data.dataset import ImageDataset

log = logging.getLogger("vlkit.features.ray_engine")
ENGINES = ("local", "ray")
INSTALL_HINT = 'pip install "vlkit[ray]"'
# Environment a worker must share with the driver: offline switches, caches, thread caps.
_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "VLKIT_", "OPEN_CLIP", "TORCH_HOME", "XDG_CACHE_HOME",
                 "OMP_", "MKL_", "OPENBLAS_", "CUDA_VISIBLE_DEVICES")
_ADDRESS = re.compile(r"auto|local|(ray://)?[A-Za-z0-9.\-_\[\]:]+:\d{1,5}")


class RayEngineError(VlkitError):
    """A Ray extraction cannot start (no Ray, bad address) or a worker failed mid-run."""


def require_ray() -> Any:
    """Import Ray, or raise one line naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is the ray[data] extra)
    except ImportError:
        raise RayEngineError(f"--engine ray needs Ray (with Ray Data), which is not installed: {INSTALL_HINT}") \
            from None
    return ray


def check_address(address: str | None) -> None:
    """Raise unless ``address`` looks like a Ray address: ``host:port``, ``ray://host:port`` or ``auto``."""
    if address is not None and not _ADDRESS.fullmatch(address):
        raise RayEngineError(f"--ray-address {address!r} is not a Ray address: use HOST:PORT of the head node "
                             "(`ray status` there prints it), ray://HOST:PORT, or auto")


def probe_address(address: str | None, timeout: float = 5.0) -> None:
    """Raise one line unless something accepts a TCP connection at ``address`` (``auto``: not probed).

    ``ray.init`` itself retries an address where nothing listens for minutes, printing warnings.
    """
    if address is None or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise RayEngineError(f"--ray-address {address}: no Ray head node answers there ({exc.__class__.__name__}: "
                             f"{exc}); start one (`ray start --head` prints its address) or fix the address") from None


def feature_engine(name: str = "local", ray_address: str | None = None,
                   workers: int | None = None) -> "RayEngine | None":
    """The store's engine from the CLI's options: None for ``local``, a :class:`RayEngine` for ``ray``.

    Options that only Ray reads are refused with ``local``; ``ray`` without Ray installed, or
    a malformed address, is one line before any work.
    """
    if name not in ENGINES:
        raise VlkitError(f"--engine {name!r} is not an extraction engine: use one of {', '.join(ENGINES)}")
    if name == "local":
        if ray_address is not None or workers is not None:
            raise VlkitError("--ray-address and --workers set up Ray extraction: add --engine ray, or drop them")
        return None
    if workers is not None and workers < 1:
        raise VlkitError(f"--workers takes an integer >= 1, got {workers}")
    check_address(ray_address)
    require_ray()
    probe_address(ray_address)
    return RayEngine(address=ray_address, workers=workers)


def worker_env() -> dict[str, str]:
    """The driver's variables that workers need to load the same model the same way (offline included)."""
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


def _precision_of(backbone: "Backbone") -> str | None:
    """The driver's precision as ``load_backbone`` takes it (None: the device's default)."""
    dtype = backbone.autocast_dtype
    if dtype is None:
        return None if backbone.device.type == "cpu" else "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


@dataclass
class ShardPlan:
    """The rows of the missing shards: shard ids, their first dataset index and row counts."""

    shards: list[int]
    starts: np.ndarray  # (S,) first dataset index of each shard
    sizes: np.ndarray  # (S,) rows in each shard
    offsets: np.ndarray = field(init=False)  # (S,) position of each shard's first row among all planned rows

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    @property
    def rows(self) -> int:
        """Planned rows in all."""
        return int(self.sizes.sum())

    def indices(self, positions: np.ndarray) -> np.ndarray:
        """(B,) positions among the planned rows -> (B,) dataset indices."""
        which = np.searchsorted(self.offsets, positions, side="right") - 1
        return self.starts[which] + (positions - self.offsets[which])


def plan_shards(shards: list[int], shard_size: int, total: int) -> ShardPlan:
    """The rows of ``shards`` (each ``shard_size`` rows, the last one shorter) of a ``total``-row entry."""
    starts = np.array([s * shard_size for s in shards], dtype=np.int64)
    sizes = np.minimum(shard_size, total - starts).astype(np.int64)
    return ShardPlan(list(shards), starts, sizes)


def decode_batch(batch: dict[str, np.ndarray], images: Any, plan: ShardPlan) -> dict[str, np.ndarray]:
    """Ray Data task: planned positions ``batch["id"]`` (B,) -> dataset ``index`` (B,) and ``pixels`` (B, 3, H, W).

    ``images`` is the store's ``_ImageTensors`` over the whole dataset, so the transform and
    the per-(view, image) seed of augmented views are the single-process path's own.
    """
    index = plan.indices(np.asarray(batch["id"], dtype=np.int64))  # (B,)
    pixels = torch.stack([images[int(i)] for i in index])  # (B, 3, H, W)
    return {"index": index, "pixels": pixels.numpy()}


class ImageEncoder:
    """Ray Data actor: one frozen backbone, loaded from its spec in ``__init__`` (never pickled)."""

    def __init__(self, name: str, pretrained: str | None, precision: str | None, fingerprint: str,
                 threads: int | None = None, fail_once: tuple[str, int] | None = None) -> None:
        from vlkit.backbones import load_backbone

        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.backbone = load_backbone(name, pretrained, device, precision)
        if self.backbone.fingerprint != fingerprint:
            raise BackboneMismatchError(
                f"a Ray worker on {os.uname().nodename} loaded {name} ({pretrained or 'default weights'}) with other "
                f"weights than the driver ({self.backbone.fingerprint} vs {fingerprint}); give every node the same "
                "checkpoint file or model version")
        self.fail_once = fail_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``pixels`` (B, 3, H, W) -> ``unit`` (B, D) normalised features and ``norm`` (B,) their norms."""
        self._maybe_fail(batch["index"])
        unit, norm = self.backbone.encode_images_with_norms(torch.from_numpy(np.ascontiguousarray(batch["pixels"])))
        return {"index": batch["index"], "unit": unit.float().cpu().numpy(), "norm": norm.float().cpu().numpy()}

    def _maybe_fail(self, index: np.ndarray) -> None:
        """Fault injection for the resume test: the first worker to meet row ``fail_once[1]`` exits hard
        (once: the flag file ``fail_once[0]`` records it)."""
        if self.fail_once is None:
            return
        flag, row = self.fail_once
        if row in index and not Path(flag).exists():
            Path(flag).write_text("failed once\n")
            os._exit(1)


class _ShardGather:
    """Driver side: scatter encoded rows into their shards; hand each full shard to ``write``."""

    def __init__(self, plan: ShardPlan, dim: int, write: Callable[[int, torch.Tensor, torch.Tensor], None]) -> None:
        self.plan, self.dim, self.write = plan, dim, write
        self.open: dict[int, tuple[np.ndarray, np.ndarray, set[int]]] = {}  # slot -> (feats, norms, rows seen)
        self.written = 0

    def add(self, index: np.ndarray, unit: np.ndarray, norm: np.ndarray) -> None:
        """Rows ``index`` (B,) with features ``unit`` (B, D) and norms ``norm`` (B,)."""
        slots = np.searchsorted(self.plan.starts, index, side="right") - 1  # (B,) which planned shard
        for slot in np.unique(slots):
            mine = slots == slot
            size = int(self.plan.sizes[slot])
            feats, norms, seen = self.open.setdefault(
                int(slot), (np.empty((size, self.dim), np.float32), np.empty(size, np.float32), set()))
            rows = index[mine] - self.plan.starts[slot]  # (b,) rows within the shard
            feats[rows], norms[rows] = unit[mine], norm[mine]
            seen.update(int(r) for r in rows)
            if len(seen) == size:
                self.write(self.plan.shards[slot], torch.from_numpy(feats), torch.from_numpy(norms))
                del self.open[int(slot)]
                self.written += 1


@dataclass
class RayEngine:
    """Encode a store's missing shards on a Ray cluster (see the module docstring).

    ``address`` joins a running cluster (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``); without
    one a local cluster is started on first use (``workers`` encoders plus ``decode_cpus`` CPUs
    for the decoding tasks) and shut down by :meth:`close` (or at exit). ``workers`` defaults
    to the cluster's GPUs, else 1. ``threads`` caps torch's threads in a CPU encoder.
    ``retries``: times Ray restarts a dead encoder (0: the run fails at once with one line,
    and the next run resumes from the shards already written). ``last_stats`` describes the
    last :meth:`encode_shards` call (rows and shards planned, seconds, images/s).
    """

    address: str | None = None
    workers: int | None = None
    decode_cpus: int | None = None
    threads: int | None = 1
    retries: int = 0
    fail_once: tuple[str, int] | None = None  # test hook: see ImageEncoder._maybe_fail
    last_stats: dict[str, Any] = field(default_factory=dict)
    _started: bool = field(default=False, repr=False)

    # ---- cluster ---------------------------------------------------------------------------
    def connect(self) -> Any:
        """Join ``address``, or start a local cluster; returns the ``ray`` module."""
        ray = require_ray()
        if ray.is_initialized():
            return ray
        check_address(self.address)
        probe_address(self.address)
        options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                       runtime_env={"env_vars": worker_env()})
        try:
            if self.address is not None:
                ray.init(address=self.address, **options)
            else:
                gpus = torch.cuda.device_count()
                workers = self.workers or max(1, gpus)
                encoders = workers * (1 if gpus else self.threads or 1)  # CPUs the encoder actors hold
                decode = self.decode_cpus or max(1, (os.cpu_count() or 1) - encoders)
                ray.init(num_cpus=encoders + decode, num_gpus=gpus, **options)
                self._started = True
                import atexit

                atexit.register(self.close)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray cluster"
            raise RayEngineError(f"cannot start or join {where}: {_first_line(exc)}; check --ray-address "
                                 "(`ray status` on the head node prints it)") from None
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the store's own bar counts the rows as they arrive
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # no banners or tracebacks: failures raise one line
        return ray

    def close(self) -> None:
        """Shut down the local cluster if this engine started it (a joined cluster is left running)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __getstate__(self) -> dict[str, Any]:
        """A copy in another process (a spawned bench cell) joins this process's local cluster instead of
        starting its own, and never shuts it down."""
        state = dict(self.__dict__)
        if self._started:
            import ray

            state["address"] = ray.get_runtime_context().gcs_address
        state["_started"] = False
        return state

    def __enter__(self) -> "RayEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _encoder_resources(self, ray: Any) -> tuple[int, dict[str, int]]:
        """Encoder workers and each one's resources (a GPU and a CPU, or ``threads`` CPUs); one line, instead
        of a pipeline that waits forever, when the cluster cannot hold them and one decoding task."""
        have = ray.cluster_resources()
        gpus, cpus = int(have.get("GPU", 0)), have.get("CPU", 0)
        workers = self.workers or max(1, gpus)
        remote = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": self.threads or 1}
        if gpus and workers > gpus:
            raise RayEngineError(f"--workers {workers}: the Ray cluster has {gpus} GPU(s), one per encoder; "
                                 f"use --workers {gpus} or fewer")
        if cpus < workers * remote["num_cpus"] + 1:
            raise RayEngineError(f"--workers {workers}: the Ray cluster has {cpus:g} CPU(s); {workers} encoder(s) of "
                                 f"{remote['num_cpus']} CPU(s) and one decoding task need "
                                 f"{workers * remote['num_cpus'] + 1}: use fewer workers or a bigger cluster")
        return workers, remote

    # ---- extraction ------------------------------------------------------------------------
    def encode_shards(self, images: Any, backbone: "Backbone", dataset: "ImageDataset", shards: list[int],
                      shard_size: int, batch_size: int,
                      write: Callable[[int, torch.Tensor, torch.Tensor], None], advance: Callable[[int], None]) -> None:
        """Encode the rows of ``shards`` of ``dataset`` and call ``write(shard, feats (n, D), norms (n,))``
        as each shard completes; ``images`` decodes one index (the store's ``_ImageTensors``)."""
        import time

        ray = self.connect()
        from ray.data import ActorPoolStrategy

        plan = plan_shards(shards, shard_size, len(dataset))
        workers, remote = self._encoder_resources(ray)
        gpus = remote.get("num_gpus", 0)
        started = time.perf_counter()
        pixels = ray.data.range(plan.rows, override_num_blocks=max(1, -(-plan.rows // batch_size))).map_batches(
            decode_batch, fn_kwargs={"images": images, "plan": plan}, batch_size=batch_size, batch_format="numpy",
            num_cpus=1)
        with warnings.catch_warnings():  # max_restarts has no named parameter yet (Ray 2.60)
            warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
            encoded = pixels.map_batches(
                ImageEncoder, fn_constructor_kwargs={
                    "name": backbone.name, "pretrained": backbone.pretrained, "precision": _precision_of(backbone),
                    "fingerprint": backbone.fingerprint, "threads": None if gpus else self.threads,
                    "fail_once": self.fail_once},
                batch_size=batch_size, batch_format="numpy", compute=ActorPoolStrategy(size=workers),
                max_restarts=self.retries, max_task_retries=self.retries, **remote)
        gather = _ShardGather(plan, backbone.embed_dim, write)
        error = None
        try:
            for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
                gather.add(batch["index"], batch["unit"], batch["norm"])
                advance(len(batch["index"]))
        except Exception as exc:  # a Ray failure: one line, or the user error a worker raised
            error = _one_line_error(exc, dataset, len(shards), gather.written)
            if error is None:
                raise  # not Ray's: a bug keeps its traceback
        if error is not None:  # raised out here, with no context: nothing keeps the failed run's actors alive
            del encoded, pixels
            gc.collect()  # Ray Data releases a failed run's actors by reference counting
            if self._started:
                self.close()  # a local cluster starts afresh on the next run
            raise error
        seconds = time.perf_counter() - started
        self.last_stats = {"rows": plan.rows, "shards": len(shards), "workers": workers, "gpus": int(gpus),
                           "seconds": seconds, "images_per_second": plan.rows / max(seconds, 1e-9)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}".rstrip(": ")


def _user_error(exc: BaseException) -> VlkitError | None:
    """The VlkitError a worker raised, found through Ray's wrappers (``cause``, ``__cause__``)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, VlkitError):
            return cause
        if isinstance(current, VlkitError) and type(current).__module__.startswith("vlkit"):
            return current
        todo += [cause, current.__cause__, current.__context__]
    return None


def _one_line_error(exc: Exception, dataset: "ImageDataset", planned: int, written: int) -> Exception | None:
    """A user error raised in a worker as itself; a Ray failure (a worker died, the cluster went away) as one
    line saying how to resume; None for anything else."""
    user = _user_error(exc)
    if user is not None:
        message = " ".join(str(user).split())
        try:
            return type(user)(message)
        except TypeError:  # a subclass with another constructor
            return VlkitError(message)
    if not type(exc).__module__.startswith("ray"):
        return None
    cause = " ".join(_first_line(exc).split(" Traceback")[0].split())[:300]
    return RayEngineError(
        f"Ray extraction of {dataset.name} failed ({cause}); {written} of {planned} missing shards were stored: run "
        "the same command again to encode only the rest (Ray's logs: /tmp/ray/session_latest/logs on each node)")


def extract_with_ray(backbone: "Backbone", dataset: "ImageDataset", store: Any, workers: int, views: int = 0,
                     address: str | None = None, threads: int | None = 1) -> dict[str, Any]:
    """Encode ``dataset`` (view 0, plus ``views`` augmented views) into ``store`` on Ray; the benchmark's entry.

    ``store`` is a :class:`~vlkit.features.store.FeatureStore`: its root, shard and batch sizes are used
    (a copy of it runs on Ray; ``store`` itself is left as it is). A local cluster (``workers`` encoders,
    ``threads`` torch threads each) is started and shut down unless ``address`` names one. Returns the
    images encoded, ``seconds`` for the whole call (cluster start included), ``pipeline_seconds`` for the Ray
    Data runs alone (worker start and model load included), images per second of each, and the cache hits
    and misses.
    """
    import copy
    import time

    started = time.perf_counter()
    engine = RayEngine(address=address, workers=workers, threads=threads)
    store = copy.copy(store)
    store.engine, store.hits, store.misses = engine, 0, 0
    pipeline = 0.0
    with engine:
        engine.connect()
        connected = time.perf_counter()
        for view in range(views + 1):
            engine.last_stats = {}
            store.image_features(backbone, dataset, view)
            pipeline += engine.last_stats.get("seconds", 0.0)
    seconds = time.perf_counter() - started
    images = len(dataset) * (views + 1)
    return {"engine": "ray", "workers": workers, "images": images, "seconds": seconds,
            "cluster_seconds": connected - started, "pipeline_seconds": pipeline,
            "images_per_second": images / max(seconds, 1e-9),
            "pipeline_images_per_second": images / max(pipeline, 1e-9) if pipeline else None,
            "cache_hits": store.hits, "cache_misses": store.misses}
