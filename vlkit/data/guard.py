"""Hide a dataset's labels until the final evaluation (the domain-adaptation guard)."""
from __future__ import annotations

from vlkit.data.dataset import ImageDataset
from vlkit.errors import VlkitError


class LabelLeakError(VlkitError):
    """Labels of an unlabelled (target) dataset were read before the final evaluation."""


class HiddenLabelDataset(ImageDataset):
    """The images of ``dataset`` with its labels locked away.

    ``items`` carry label 0; ``labels`` (and everything built on it: ``subset``,
    ``class_counts``) raises :class:`LabelLeakError` until :meth:`reveal` is called,
    which the harness does once, after fitting, to score. The identity is the
    original's, so cached features are shared.
    """

    def __init__(self, dataset: ImageDataset) -> None:
        super().__init__(items=[(src, 0) for src, _ in dataset.items], classnames=list(dataset.classnames),
                         name=dataset.name, identity=dataset.identity, domain=dataset.domain,
                         templates=list(dataset.templates), meta=dict(dataset.meta))
        self._hidden = list(dataset.labels)
        self._revealed = False

    @property
    def labels(self) -> list[int]:
        if not self._revealed:
            raise LabelLeakError(f"labels of the unlabelled dataset {self.name} were read before the final evaluation")
        return list(self._hidden)

    def subset(self, indices, name_suffix: str) -> ImageDataset:
        """Subsets would need labels: refuse them while hidden."""
        if not self._revealed:
            raise LabelLeakError(f"cannot take a labelled subset of {self.name} before the final evaluation")
        return super().subset(indices, name_suffix)

    def reveal(self) -> list[int]:
        """Unlock and return the labels (the final evaluation only)."""
        self._revealed = True
        return list(self._hidden)
