"""Bench cells (dataset x method x shots x seed) and the JSON-lines log that makes runs resumable.

Each finished cell is appended to ``cells.jsonl`` as one line written with a single
``write`` on a file opened with ``O_APPEND`` and then fsync'ed, so a kill leaves at
most one torn last line. Reading skips a torn line; opening for append first cuts
it off. A cell whose record is in the log is done and is never run again.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from vlkit.errors import VlkitError
from vlkit.io import FileLock

log = logging.getLogger("vlkit.protocols")
RECORD_VERSION = 1


@dataclass(frozen=True, order=True)
class Cell:
    """One unit of work: a method fitted on one dataset at one shot count and seed."""

    data: str
    method: str
    shots: int
    seed: int
    protocol: str = "fewshot"
    model: str = ""
    pretrained: str = ""
    views: int = 10
    config: str = ""  # method option overrides as sorted JSON ("" = the method's defaults)
    weights: str = ""  # which weights the model name stood for (a digest; "" when the name says it all)
    val: str = ""  # the validation protocol: "auto:16" (val split, <= 16 per class) or "from-train"

    @property
    def key(self) -> str:
        """A stable string naming the cell (the resume key): a change of any field is another cell."""
        fields = (self.protocol, self.model, self.pretrained, self.data, self.method, self.shots, self.seed,
                  f"views={self.views}", self.config) + ((f"weights={self.weights}",) if self.weights else ()) \
            + ((f"val={self.val}",) if self.val else ())
        return "|".join(str(v) for v in fields)

    @property
    def validation(self) -> dict[str, Any]:
        """The validation options this cell runs with: ``{"val": mode, "val_per_class": n}`` ({} if unset)."""
        if not self.val:
            return {}
        mode, _, per_class = self.val.partition(":")
        return {"val": mode, **({"val_per_class": int(per_class)} if per_class else {})}

    @property
    def overrides(self) -> dict[str, Any]:
        """The method options this cell sets."""
        return json.loads(self.config) if self.config else {}

    def label(self) -> str:
        """Short human text: ``fashion-mnist linear-probe 4-shot seed 1``."""
        return f"{self.data} {self.method} {self.shots}-shot seed {self.seed}"

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Cell":
        """The cell a log record belongs to."""
        c = record["cell"]
        return cls(c["data"], c["method"], int(c["shots"]), int(c["seed"]), c.get("protocol", "fewshot"),
                   c.get("model", ""), c.get("pretrained", ""), int(c.get("views", 10)), c.get("config", ""),
                   c.get("weights", ""), c.get("val", ""))


def grid(data: Iterable[str], methods: Iterable[str], shots: Iterable[int], seeds: Iterable[int],
         protocol: str = "fewshot", model: str = "", pretrained: str = "", views: int = 10,
         overrides: dict[str, dict[str, Any]] | None = None, weights: str = "", val: str = "") -> list[Cell]:
    """Every cell, dataset-major so one dataset's features are encoded and reused together.

    ``overrides`` maps a method to the options its cells set (a schedule, say); ``weights``
    names the model's weights, so cells of other weights under the same name are not reused;
    ``val`` names the validation protocol (:func:`val_key`), so protocols never mix on resume.
    """
    methods, shots, seeds = list(methods), list(shots), list(seeds)
    configs = {m: json.dumps((overrides or {}).get(m) or {}, sort_keys=True) for m in methods}
    return [Cell(d, m, k, s, protocol, model, pretrained or "", views, "" if configs[m] == "{}" else configs[m],
                 weights, val) for d in data for k in shots for s in seeds for m in methods]


def val_key(val: str, val_per_class: int) -> str:
    """The cell field naming a validation protocol: ``"from-train"`` or ``"<mode>:<per class>"``."""
    return val if val == "from-train" else f"{val}:{int(val_per_class)}"


class CellLog:
    """The append-only ``cells.jsonl`` of one bench output folder (one writer at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: FileLock | None = None

    # ---- reading -------------------------------------------------------------------
    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete record, in file order; a torn or foreign line is skipped."""
        if not self.path.is_file():
            return
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.endswith(b"\n"):
                    log.warning("%s:%d is a torn last line (killed mid-write); ignoring it", self.path, number)
                    break
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError:
                    log.warning("%s:%d is not JSON; ignoring it", self.path, number)
                    continue
                if isinstance(record, dict) and "cell" in record:
                    yield record

    def done(self) -> dict[str, dict[str, Any]]:
        """Cell key -> its record (the last one if a key appears twice)."""
        return {Cell.from_record(r).key: r for r in self.records()}

    # ---- writing -------------------------------------------------------------------
    def __enter__(self) -> "CellLog":
        """Take the folder's lock (a second bench on the same folder fails) and repair a torn tail."""
        lock = FileLock(self.path.with_name(self.path.name + ".lock"),
                        busy=f"another vlkit bench is writing {self.path.parent}: wait for it or use another --out")
        self._lock = lock.acquire(wait=False)
        self._cut_torn_tail()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _cut_torn_tail(self) -> None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        log.warning("cutting a torn last line (%d bytes) off %s", len(data) - keep, self.path)
        with self.path.open("r+b") as handle:
            handle.truncate(keep)
            os.fsync(handle.fileno())

    def append(self, cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
        """Write one finished cell as one line (single write, O_APPEND, fsync); return the record."""
        if self._lock is None:
            raise RuntimeError("CellLog.append outside 'with CellLog(...)'")
        record = {"version": RECORD_VERSION, "cell": asdict(cell), "key": cell.key, "result": result}
        line = (json.dumps(record, default=_jsonable, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):  # a short write would leave a torn line; fail loudly
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        return record


def _jsonable(value: Any) -> Any:
    """JSON fallback for numpy/torch scalars and paths."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
