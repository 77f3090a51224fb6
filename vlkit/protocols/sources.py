"""Bench datasets: a named source of a training pool and a test set, loaded only when a cell needs it.

``--data`` items are resolved by :func:`sources_from_specs`:

- ``NAME@ROOT``: benchmark ``NAME`` (e.g. ``OxfordPets``) from a CoOp-style data root;
- ``coop@ROOT``: every one of the 11 CoOp benchmarks found under ``ROOT``;
- anything else: an offline name, an ImageFolder tree or a CoOp-style folder.

Every split is loaded by ``vlkit.data.resolve.load_data`` (the one resolver); a source's
``val`` split is optional (:meth:`DataSource.val_split`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from vlkit.data.dataset import ImageDataset, MissingSplitError
from vlkit.data.resolve import load_data
from vlkit.errors import DataError, VlkitError

Loader = Callable[[str], ImageDataset]


@dataclass
class DataSource:
    """A dataset of the bench: ``name`` keys its cells; ``load(split)`` gives ``train``/``test``."""

    name: str
    load: Loader
    _cache: dict[str, ImageDataset] = field(default_factory=dict, repr=False)

    def split(self, split: str) -> ImageDataset:
        """The ``train`` pool, the ``val`` split or the ``test`` set, loaded once."""
        if split not in self._cache:
            self._cache[split] = self.load(split)
        return self._cache[split]

    def val_split(self) -> ImageDataset | None:
        """The data's own val split, or None when it has none (loaded once)."""
        if "val" not in self._cache:
            try:
                self._cache["val"] = self.load("val")
            except MissingSplitError:
                self._cache["val"] = None
        return self._cache["val"]

    @classmethod
    def from_datasets(cls, name: str, train: ImageDataset, test: ImageDataset,
                      val: ImageDataset | None = None) -> "DataSource":
        """A source over datasets already in memory (tests, notebooks); ``val`` is optional."""
        splits = {"train": train, "test": test, **({"val": val} if val is not None else {})}

        def load(split: str) -> ImageDataset:
            if split not in splits:
                raise MissingSplitError(f"{name} has no {split} split")
            return splits[split]

        return cls(name, load)


def _resolver(spec: str) -> Loader:
    def load(split: str) -> ImageDataset:
        return load_data(spec, split)

    return load


def _benchmark(name: str, root: str) -> DataSource:
    from vlkit.data.coop_suite import benchmark_info

    info = benchmark_info(name)
    return DataSource(info.name, _resolver(f"{info.name}@{root}"))  # the one resolver, as every command


def _display_name(spec: str) -> str:
    """Offline names as they are; folders by their benchmark name if they are one, else by basename."""
    path = Path(spec).expanduser()
    if not path.exists():
        return spec
    from vlkit.data.coop_suite import benchmark_info

    try:
        return benchmark_info(path.name).name
    except DataError:
        return path.name or spec


def sources_from_specs(specs: Sequence[str]) -> list[DataSource]:
    """Resolve ``--data`` items (see the module docstring) into named sources, names unique."""
    from vlkit.data.coop_suite import BENCHMARKS

    out: list[tuple[DataSource, str]] = []
    for spec in specs:
        name, sep, root = spec.partition("@")
        if sep and name.lower() in ("coop", "all"):
            found = [info.name for info in BENCHMARKS.values() if (Path(root).expanduser() / info.folder).is_dir()]
            if not found:
                raise DataError(f"no CoOp benchmark folder under {root} (expected e.g. {root}/oxford_pets)")
            out += [(_benchmark(n, root), spec) for n in found]
        elif sep:
            out.append((_benchmark(name, root), spec))
        else:
            out.append((DataSource(_display_name(spec), _resolver(spec)), spec))
    names = [s.name for s, _ in out]
    for source, spec in out:
        if names.count(source.name) > 1 and "@" not in spec:  # two folders, one basename: name by the path
            source.name = spec
    sources = [s for s, _ in out]
    if len({s.name for s in sources}) != len(sources):
        raise VlkitError(f"--data names the same dataset twice: {', '.join(s.name for s in sources)}")
    return sources


def with_test_subset(source: DataSource, per_class: int) -> DataSource:
    """``source`` scored on the first ``per_class`` test images of each class, named ``NAME:testN``."""
    from vlkit.data.fewshot import first_per_class

    def load(split: str) -> ImageDataset:
        data = source.split(split)
        return first_per_class(data, per_class) if split == "test" else data

    return DataSource(f"{source.name}:test{per_class}", load)
