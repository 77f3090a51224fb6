"""One run held in memory for the service: predictions from any thread, adds one at a time.

A run is either an upgrade run (``vlkit upgrade init``: ``run.json`` names a ``state-N``
Tip-Adapter cache that grows) or a fitted run (``vlkit fit --run-dir``: ``run.json`` plus
``method/``, read-only here). Adds go through :func:`vlkit.apps.upgrade.add_features`,
which commits under the run's :class:`~vlkit.io.FileLock` (new state folder, fsync'ed,
then ``run.json`` swapped atomically), so a command-line ``vlkit upgrade add`` and the
service can share a run. In this process adds are a group commit
(:class:`~vlkit.apps.serve.batching.GroupCommit`): images are encoded by each request's own
thread, then one writer commits every add waiting at once (one retune, one fsync'ed state) and
acknowledges each after that commit, so one slow upload never holds the others back and
concurrent adds do not pay one retune and one fsync each.

The model in memory follows ``run.json``: a change made by another process (its inode or
mtime changes on every atomic swap) is picked up before the next prediction.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from vlkit.apps import upgrade
from vlkit.apps.serve.batching import GroupCommit
from vlkit.apps.commands import read_run
from vlkit.errors import VlkitError
from vlkit.io import read_json
from vlkit.methods.base import Method


class NotUpgradeableError(VlkitError):
    """Examples were sent to a run that cannot take them (a fitted run)."""


class RunWriteError(VlkitError):
    """The run could not be written (disk full, permissions); the add did not happen."""


class ServedRun:
    """A loaded run: ``classes``, ``predict(images, top_k)``, and ``add(images, label)`` for upgrade runs."""

    def __init__(self, run: str | Path, backbone: Any = None, device: str | None = None) -> None:
        self.run = Path(run)
        run_file = self.run / upgrade.RUN_FILE
        if not run_file.is_file():
            raise VlkitError(f"{self.run} is not a run folder (no run.json): serve a folder made by "
                             "`vlkit upgrade init` or `vlkit fit --run-dir`")
        record = read_json(run_file, "run record", "re-create the run")
        self.upgradeable = isinstance(record, dict) and "state" in record and "format" in record
        self._adds: Any = None  # the group-commit writer, started with the first add
        self._adds_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        if self.upgradeable:
            self._seen = self._stamp()  # before reading: a change made meanwhile is seen by the next refresh
            self.meta = upgrade.read_meta(self.run)
            self.method: Method = upgrade.load_method(self.run, self.meta)  # a damaged state fails before the model
            self.backbone = upgrade.load_backbone_for(self.meta, backbone, device)
        else:
            record = read_run(self.run)
            method_dir = self.run / "method"
            if method_dir.resolve().parent != self.run.resolve():
                raise VlkitError(f"{method_dir} leads outside the run folder {self.run}: refit with `vlkit fit`")
            if backbone is None:
                from vlkit.backbones import load_backbone

                backbone = load_backbone(record["model"], record.get("pretrained"), device)
            self.backbone = backbone
            self.method = Method.load(method_dir, backbone, fix="the run's method is damaged; refit it with "
                                                                "`vlkit fit ... --run-dir --force`")
            self.meta = {"model": record["model"], "classes": list(self.method.classnames_), "method": record["method"]}
        self.classes: list[str] = list(self.meta["classes"])

    # ---- what the run is ------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Classes (with example counts for an upgrade run), model, method and whether it takes examples."""
        self.refresh()
        meta = self.meta
        out = {"run": self.run.name, "model": meta["model"], "method": self.method.name,
               "classes": self.classes, "upgradeable": self.upgradeable}
        if self.upgradeable:
            out.update(examples=meta["examples"], per_class=dict(meta["per_class"]),
                       alpha=float(self.method.alpha_), beta=float(self.method.beta_))
        return out

    def _stamp(self) -> tuple[int, int]:
        stat = (self.run / upgrade.RUN_FILE).stat()
        return stat.st_ino, stat.st_mtime_ns

    def refresh(self) -> None:
        """Reload the upgrade run's state when ``run.json`` changed since it was read (another process added)."""
        if not self.upgradeable:
            return
        with self._reload_lock:
            try:
                stamp = self._stamp()
                if stamp == self._seen:
                    return
                meta = upgrade.read_meta(self.run)
                method = upgrade.load_method(self.run, meta)
            except (OSError, VlkitError):  # caught mid-swap by another writer: keep the model we have
                return
            self.meta, self.method, self._seen = meta, method, stamp

    # ---- predictions ---------------------------------------------------------------------
    def inputs(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """What the method reads: (n, D) image features, or (n, 3, H, W) preprocessed images for
        methods that change the image tower."""
        with torch.no_grad():
            if self.method.input_kind == "images":
                return torch.stack([self.backbone.preprocess(im) for im in images]).to(self.backbone.device)
            return self.backbone.encode_pil(list(images)).cpu()  # (n, D)

    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """(n, C) class probabilities of the current model for :meth:`inputs`."""
        self.refresh()
        method = self.method  # one reference: an add swapping the model mid-call cannot mix two
        with torch.no_grad():
            return method.logits(inputs).float().softmax(dim=-1).cpu()

    def predict(self, images: Sequence[Image.Image], top_k: int = 5) -> list[list[dict[str, Any]]]:
        """Top-``top_k`` classes with probabilities for each image (best first)."""
        return self.top(self.probabilities(self.inputs(images)), top_k)

    def top(self, probs: torch.Tensor, top_k: int) -> list[list[dict[str, Any]]]:
        """(n, C) probabilities -> for each row, the ``top_k`` classes with their probabilities."""
        top = probs.topk(min(top_k, probs.shape[1]), dim=-1)
        return [[{"class": self.classes[int(i)], "probability": float(p)} for p, i in zip(values, ids)]
                for values, ids in zip(top.values, top.indices)]

    # ---- the upgrade -------------------------------------------------------------------------
    def add(self, images: Sequence[Image.Image], label: str) -> dict[str, Any]:
        """Add ``images`` under ``label`` to the run's cache; returns once the change is on disk.

        Refused (nothing written) for a fitted run or an unknown label.
        """
        self.check_add(label)
        feats = self.inputs(images)  # (n, D), encoded in this request's thread
        result = self._writer().add(feats, label)
        return {key: result[key] for key in ("label", "added", "examples", "per_class", "alpha", "beta", "retuned")}

    def _writer(self) -> Any:
        with self._adds_lock:
            if self._adds is None:
                self._adds = GroupCommit(self._commit)
            return self._adds

    def _commit(self, groups: list[tuple[torch.Tensor, str]]) -> list[dict[str, Any]]:
        """Write every add of ``groups`` in one commit (the writer thread calls this)."""
        try:
            return upgrade.add_feature_groups(self.run, groups, fingerprint=self.backbone.fingerprint)
        except OSError as exc:  # the commit is atomic: run.json still names the state before this group
            raise RunWriteError(f"could not write the run ({exc.strerror or exc}); nothing was added: "
                                "free disk space or fix the folder's permissions, then send it again") from None
        finally:
            self.refresh()

    def check_add(self, label: str) -> None:
        """Refuse an add before any image is read: a fitted run, or a label not among the classes."""
        if not self.upgradeable:
            raise NotUpgradeableError(
                f"this run was fitted by `vlkit fit` ({self.method.name}) and takes no examples: serve an upgrade "
                "run (`vlkit upgrade init`) to add examples")
        if label not in self.classes:
            raise VlkitError(f"unknown label {label[:80]!r}; this run's classes are: {', '.join(self.classes)}")
