"""Micro-batching: predictions share one forward pass; adds share one retune and one durable commit.

Under load, requests decoded in FastAPI's thread pool would otherwise each run the
encoder at the same time, dozens of small forward passes competing for the cores (and the
later ones starved). Here a request queues its decoded images and waits; the worker takes
everything queued (up to ``max_images``), encodes it as one batch, and hands each request
its rows. With one waiting request this is the plain path plus a thread hand-off.

Adds are a group commit (:class:`GroupCommit`): each request queues its encoded features
and waits; one writer thread takes every add waiting, applies them in order in one retune
and one fsync'ed commit (:func:`vlkit.apps.upgrade.add_feature_groups`), and only then
acknowledges each of them. A crash before the commit's ``run.json`` swap loses the whole
group, none of which was acknowledged; a failed commit fails every add of the group.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from PIL import Image



@dataclass
class _Job:
    images: Sequence[Image.Image]
    top_k: int
    done: threading.Event = field(default_factory=threading.Event)
    rows: list[list[dict[str, Any]]] | None = None
    error: BaseException | None = None


class PredictionBatcher:
    """``predict(images, top_k)`` like :meth:`ServedRun.predict`, batched across concurrent callers."""

    def __init__(self, served: Any, max_images: int = 64) -> None:  # a ServedRun
        self.served, self.max_images = served, max_images
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.batches = 0  # forward passes run (a test reads it)
        self._worker = threading.Thread(target=self._work, name="vlkit-serve-predict", daemon=True)
        self._worker.start()

    def predict(self, images: Sequence[Image.Image], top_k: int = 5) -> list[list[dict[str, Any]]]:
        """Top-``top_k`` classes for each image; blocks until the worker has run them."""
        job = _Job(list(images), top_k)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.rows or []

    def _take(self) -> list[_Job]:
        """The next job, and every job already waiting behind it while the batch has room."""
        jobs = [self._queue.get()]
        count = len(jobs[0].images)
        while count < self.max_images:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            count += len(job.images)
        return jobs

    def _work(self) -> None:
        while True:
            jobs = self._take()
            try:
                probs = self.served.probabilities(self.served.inputs([im for job in jobs for im in job.images]))
                self.batches += 1
                start = 0
                for job in jobs:
                    job.rows = self.served.top(probs[start:start + len(job.images)], job.top_k)
                    start += len(job.images)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request, the worker lives on
                for job in jobs:
                    job.error = exc
            finally:
                for job in jobs:
                    job.done.set()


@dataclass
class _Add:
    features: torch.Tensor  # (n, D)
    label: str
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None


class GroupCommit:
    """``add(features, label)``: blocks until a commit holding this add is durable; concurrent adds share one.

    ``commit(groups)`` writes a list of (features, label) at once and returns one result per add
    (or raises, failing them all). At most ``max_adds`` adds go into one commit.
    """

    def __init__(self, commit: Callable[[list[tuple[torch.Tensor, str]]], list[dict[str, Any]]],
                 max_adds: int = 256) -> None:
        self.commit, self.max_adds = commit, max_adds
        self._queue: queue.SimpleQueue[_Add] = queue.SimpleQueue()
        self.commits = 0  # commits written (a test and the load benchmark read it)
        self._worker = threading.Thread(target=self._work, name="vlkit-serve-adds", daemon=True)
        self._worker.start()

    def add(self, features: torch.Tensor, label: str) -> dict[str, Any]:
        """This add's result once the commit holding it is on disk; raises that commit's error."""
        job = _Add(features, label)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result or {}

    def _take(self) -> list[_Add]:
        jobs = [self._queue.get()]
        while len(jobs) < self.max_adds:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _work(self) -> None:
        while True:
            jobs = self._take()
            try:
                results = self.commit([(job.features, job.label) for job in jobs])
                self.commits += 1
                for job, result in zip(jobs, results):
                    job.result = result
            except BaseException as exc:  # noqa: BLE001 - every add of the group failed; the writer lives on
                for job in jobs:
                    job.error = exc
            finally:
                for job in jobs:
                    job.done.set()
