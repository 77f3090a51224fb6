"""The overlapped extraction pipeline: read, decode and transform, and encode, each stage in its own thread.

Stages (:func:`encode_views`), joined by bounded queues (:func:`run_stages`) so that each
works on the next batch while the one after it is busy and none runs more than
``depth`` batches ahead::

    file reads (a thread pool, in path order)
      -> decode the batch (torchvision's ``decode_jpeg`` on a list: nvJPEG on CUDA,
         libjpeg-turbo on the CPU) and build every requested view from the decoded
         images: view 0 with :func:`~vlkit.features.gpu_decode.resize_normalize` (the
         model's evaluation preprocessing), views >= 1 with
         :func:`~vlkit.features.gpu_augment.augment_views` (the store's seeded crop + flip)
      -> encode each view (the caller's thread)

On CUDA the decode stage runs on its own stream and records an event the encoder's
stream waits on; the encoder runs on a second stream and copies features into pinned
host buffers without blocking; file bytes are packed into a pinned buffer per batch.
On the CPU the same stage code runs without streams or pinning (the tests run it so).

One read and one decode per image serve every view: 10 augmented views cost one pass
over the files. A file the batched decode rejects (or that cannot be read) is decoded by
``fallback`` (the store passes the dataset's own PIL decode, so a corrupt file raises the
same ``DataError`` as on the PIL path). An exception in any stage is re-raised in the
consumer and stops the other stages.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from open_clip.transform import PreprocessCfg

from vlkit.features.gpu_augment import augment_views
from vlkit.features.gpu_decode import (decode_or_fallback, gpu_decode_enabled, gpu_reproduces, jpeg_paths,
                                       pil_decode, prefetched_bytes, read_bytes, read_bytes_or_none, resize_normalize)

_DONE = object()  # end of stream marker passed down the queues


@dataclass
class _Failure:
    """An exception raised in a stage, carried down the queues to the consumer."""

    exc: BaseException


def run_stages(source: Iterable[Any], stages: Sequence[Callable[[Any], Any]], depth: int = 2,
               name: str = "vlkit-pipeline", poll_s: float = 0.1) -> Iterator[Any]:
    """Yield ``stages[-1](...(stages[0](item)))`` for each ``item`` of ``source``, in order.

    ``source`` is iterated in one thread and each stage runs in its own thread, with a
    queue of at most ``depth`` items between neighbours. An exception in ``source`` or a
    stage is re-raised here (the same object); closing the iterator early (``break``, an
    error in the consumer) stops every thread. Threads poll a stop flag every ``poll_s``
    seconds, so none blocks forever on a full or empty queue.
    """
    stop = threading.Event()
    queues = [queue.Queue(maxsize=max(1, depth)) for _ in range(len(stages) + 1)]

    def put(q: queue.Queue, item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=poll_s)
                return True
            except queue.Full:
                continue
        return False

    def get(q: queue.Queue) -> Any:
        while not stop.is_set():
            try:
                return q.get(timeout=poll_s)
            except queue.Empty:
                continue
        return _DONE

    def feed() -> None:
        items = iter(source)
        try:
            for item in items:
                if not put(queues[0], item):
                    return
            put(queues[0], _DONE)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put(queues[0], _Failure(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's own resources (its read threads) end here

    def work(k: int, stage: Callable[[Any], Any]) -> None:
        while True:
            item = get(queues[k])
            if item is _DONE or isinstance(item, _Failure):
                put(queues[k + 1], item)
                return
            try:
                out = stage(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                put(queues[k + 1], _Failure(exc))
                return
            if not put(queues[k + 1], out):
                return

    threads = [threading.Thread(target=feed, name=f"{name}-source", daemon=True)]
    threads += [threading.Thread(target=work, args=(k, stage), name=f"{name}-stage{k}", daemon=True)
                for k, stage in enumerate(stages)]
    for thread in threads:
        thread.start()
    try:
        while True:
            try:
                item = queues[-1].get(timeout=poll_s)
            except queue.Empty:
                if not any(thread.is_alive() for thread in threads) and queues[-1].empty():
                    raise RuntimeError(f"{name}: every stage stopped without a result") from None
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)


def pipeline_paths(backbone: Any, dataset: Any, start: int = 0, stop: int | None = None) -> list[str] | None:
    """The JPEG paths of items ``[start, stop)`` when the pipeline applies to ``backbone``, else None.

    It applies to datasets of JPEG files, every view, on CUDA and on the CPU, for a
    preprocessing config the tensor transforms reproduce
    (:func:`~vlkit.features.gpu_decode.gpu_reproduces`), unless ``VLKIT_GPU_DECODE=0``.
    On the CPU too it beats the store's PIL DataLoader (``benchmarks/results/extraction.json``,
    vlkit-mini, 256 JPEGs of 500x375 on a shared 2-core machine: 1.3x with one view and
    3.3x per view with 11 views on one core, 2.2x and 5.4x on two).
    """
    if not gpu_decode_enabled():
        return None
    if not gpu_reproduces(backbone.preprocess_cfg):
        return None
    return jpeg_paths(dataset, start, stop)


@dataclass
class ViewBatch:
    """The views of one batch of images, ready to encode."""

    indices: list[int]  # dataset index of each row
    views: dict[int, torch.Tensor]  # {view: (B, 3, S, S) float32 on the device}
    ready: Any = None  # CUDA event recorded after the views were built (None on the CPU)
    keep: Any = field(default=None, repr=False)  # pinned bytes held until the batch is consumed


def batch_sizes(chunk_sizes: Sequence[int], batch_size: int) -> list[int]:
    """Batch lengths that cover ``chunk_sizes`` in order, ``batch_size`` at most, never crossing a chunk's end."""
    return [min(batch_size, chunk - start) for chunk in chunk_sizes for start in range(0, chunk, batch_size)]


def _byte_batches(paths: Sequence[str], indices: Sequence[int], sizes: Sequence[int], workers: int,
                  pin: bool) -> Iterator[tuple[list[int], list[torch.Tensor | None], Any]]:
    """(indices, file bytes or None where unreadable, pinned buffer or None) per batch of ``sizes``, in order."""
    position = 0
    for datas in prefetched_bytes(paths, max(sizes, default=1), workers, reader=read_bytes_or_none,
                                  sizes=sizes):
        rows = list(indices[position:position + len(datas)])
        position += len(datas)
        buffer = None
        if pin and any(d is not None for d in datas):
            total = sum(len(d) for d in datas if d is not None)
            buffer = torch.empty(total, dtype=torch.uint8, pin_memory=True)
            offset, packed = 0, []
            for data in datas:
                if data is None:
                    packed.append(None)
                    continue
                buffer[offset:offset + len(data)].copy_(data)
                packed.append(buffer[offset:offset + len(data)])
                offset += len(data)
            datas = packed
        yield rows, datas, buffer


def view_batches(paths: Sequence[str], indices: Sequence[int], views: Sequence[int], cfg: Any,
                 device: torch.device, fallback: Callable[[int], torch.Tensor], batch_size: int = 256,
                 workers: int | None = None, depth: int = 2,
                 chunk_sizes: Sequence[int] | None = None) -> Iterator[ViewBatch]:
    """Decoded, transformed :class:`ViewBatch` es of ``paths`` (dataset ``indices``) for ``views``, in order.

    ``fallback(index)`` gives a (3, H, W) uint8 image for a file the batched decode rejects.
    Reading and decoding run ``depth`` batches ahead of the caller (:func:`run_stages`).
    With ``chunk_sizes`` (summing to ``len(paths)``) no batch crosses a chunk's end.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    workers = min(8, max(1, (os.cpu_count() or 1) - 1)) if workers is None else workers
    stream = torch.cuda.Stream(device) if cuda else None
    augmented = [v for v in views if v > 0]

    pool = ThreadPoolExecutor(workers, thread_name_prefix="vlkit-decode") if not cuda and workers > 1 else None

    def decode(item: tuple[list[int], list[torch.Tensor | None], Any]) -> ViewBatch:
        rows, datas, buffer = item
        with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
            images = decode_or_fallback(datas, device, lambda i: fallback(rows[i]), pool)  # (3, H, W) uint8 each
            built = {0: resize_normalize(images, cfg)} if 0 in views else {}
            if augmented:
                built.update(augment_views(images, rows, augmented, cfg))
            ready = None
            if cuda:
                ready = torch.cuda.Event()
                ready.record(stream)
        return ViewBatch(rows, {v: built[v] for v in views}, ready, buffer)

    sizes = batch_sizes(list(chunk_sizes) if chunk_sizes is not None else [len(paths)], batch_size)
    source = _byte_batches(list(paths), list(indices), sizes, workers, pin=cuda)
    try:
        yield from run_stages(source, [decode], depth=depth, name="vlkit-extract")
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def encode_view_chunks(backbone: Any, paths: Sequence[str], indices: Sequence[int], views: Sequence[int],
                       fallback: Callable[[int], torch.Tensor], chunk_sizes: Sequence[int], batch_size: int = 256,
                       workers: int | None = None, on_batch: Callable[[int], None] | None = None,
                       ) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Per chunk of ``chunk_sizes`` rows, in order: {view: (normalised features (n, D) float32, norms (n,))}.

    One pipeline runs over every chunk (the store's shards), so reading and decoding go on
    across a chunk's end while the caller writes it. One read and one decode per image for
    all ``views``; ``on_batch(view-images encoded)`` after each batch (progress). On CUDA the
    encoder runs on its own stream, waiting on the decode stream's event per batch, and
    copies into pinned host buffers; the stream is synchronised once per chunk.
    """
    device = torch.device(backbone.device)
    cuda = device.type == "cuda"
    if sum(chunk_sizes) != len(paths):
        raise ValueError(f"chunk sizes {list(chunk_sizes)} do not add up to {len(paths)} files")
    stream = torch.cuda.Stream(device) if cuda else None
    pending = [size for size in chunk_sizes if size > 0]

    def buffers(n: int) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        feats = {v: torch.empty(n, backbone.embed_dim, pin_memory=cuda) for v in views}  # (n, D) each
        return feats, {v: torch.empty(n, pin_memory=cuda) for v in views}  # (n,) each

    if not pending:
        return
    feats, norms = buffers(pending[0])
    row = 0
    for batch in view_batches(paths, indices, views, backbone.preprocess_cfg, device, fallback, batch_size, workers,
                              chunk_sizes=pending):
        size = len(batch.indices)
        with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():  # never held across a yield
            if cuda:
                stream.wait_event(batch.ready)
            for view in views:
                images = batch.views[view]  # (B, 3, S, S)
                if cuda:
                    images.record_stream(stream)  # allocated on the decode stream, read on this one
                unit, norm = backbone.encode_images_with_norms(images)  # (B, D), (B,)
                feats[view][row:row + size].copy_(unit, non_blocking=cuda)
                norms[view][row:row + size].copy_(norm.float(), non_blocking=cuda)
        row += size
        if on_batch is not None:
            on_batch(size * len(views))
        if row == pending[0]:
            if cuda:
                stream.synchronize()  # the chunk's copies into host memory are done
            yield {v: (feats[v], norms[v]) for v in views}
            pending.pop(0)
            if pending:
                feats, norms = buffers(pending[0])
            row = 0
    if pending:
        raise RuntimeError(f"the extraction pipeline stopped with {len(pending)} chunks unfinished")


def encode_views(backbone: Any, paths: Sequence[str], indices: Sequence[int], views: Sequence[int],
                 fallback: Callable[[int], torch.Tensor], batch_size: int = 256, workers: int | None = None,
                 on_batch: Callable[[int], None] | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{view: (normalised features (N, D) float32, norms (N,) float32)} of ``paths`` for each of ``views``.

    :func:`encode_view_chunks` with one chunk.
    """
    (only,) = list(encode_view_chunks(backbone, paths, indices, views, fallback, [len(paths)], batch_size,
                                      workers, on_batch))
    return only


def gpu_image_batches(paths: Sequence[str | Path], cfg: PreprocessCfg, batch_size: int = 256,
                      device: str | torch.device = "cuda", num_workers: int | None = None) -> Iterator[torch.Tensor]:
    """Yield (B, 3, S, S) float32 evaluation-view batches on ``device``, in the order of ``paths``.

    The extraction pipeline (:func:`view_batches`) for view 0 alone:
    threads read bytes ahead while another thread decodes and resizes ahead of the caller.
    ``device="cpu"`` runs the same stages on the CPU (tests).
    """
    paths = [str(p) for p in paths]

    def pil_fallback(index: int) -> torch.Tensor:
        return pil_decode(read_bytes(paths[index]))

    for batch in view_batches(paths, range(len(paths)), [0], cfg, torch.device(device), pil_fallback, batch_size,
                              num_workers):
        if batch.ready is not None:
            torch.cuda.current_stream(batch.views[0].device).wait_event(batch.ready)
            batch.views[0].record_stream(torch.cuda.current_stream(batch.views[0].device))
        yield batch.views[0]
