"""A fixed held-out sample for the web page: accuracy that rises as examples are added.

``HeldOut(data)`` takes the first ``per_class`` images of each class from the test split of
``data`` (an offline dataset name or a folder; the same images every start), encodes them
once, and scores the run's current model on them in milliseconds. It also keeps a few
images per class from the train split (never the test split, so adding them cannot leak
the held-out answers) for the page to offer as examples to try.
"""
from __future__ import annotations

import io
from typing import Any

import torch

from vlkit.data.resolve import load_data
from vlkit.errors import DataError
from vlkit.apps.serve.runs import ServedRun


def _first_per_class(labels: list[int], per_class: int) -> list[int]:
    """Indices of the first ``per_class`` items of each label, in dataset order."""
    taken: dict[int, int] = {}
    chosen = []
    for index, label in enumerate(labels):
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            chosen.append(index)
    return chosen


class HeldOut:
    """Held-out test images of ``data`` scored against ``served``; try-out images from its train split."""

    def __init__(self, served: ServedRun, data: str, per_class: int = 20, try_per_class: int = 2) -> None:
        if per_class < 1 or try_per_class < 0:
            raise DataError(f"held-out sizes must be >= 1 (got {per_class}) and >= 0 (got {try_per_class})")
        test = load_data(data, "test")
        if sorted(test.classnames) != sorted(served.classes):
            raise DataError(f"held-out data {data} has classes {test.classnames}, the run has {served.classes}: "
                            "serve a run made for these classes, or drop --heldout")
        self.data = data
        to_run = [served.classes.index(name) for name in test.classnames]  # data's label -> run's index
        chosen = _first_per_class(list(test.labels), per_class)
        self.labels = torch.tensor([to_run[test.labels[i]] for i in chosen])  # (N,)
        self.inputs = served.inputs([test.image(i) for i in chosen])  # (N, D) or (N, 3, H, W)
        self.served = served
        self.tryouts: list[tuple[str, bytes]] = []  # (true class, PNG bytes)
        if try_per_class:
            train = load_data(data, "train")
            for i in _first_per_class(list(train.labels), try_per_class):
                buffer = io.BytesIO()
                train.image(i).save(buffer, format="PNG")
                self.tryouts.append((train.classnames[train.labels[i]], buffer.getvalue()))

    def score(self) -> dict[str, Any]:
        """Top-1 accuracy (%) of the run's current model on the sample, with the sample's size."""
        predicted = self.served.probabilities(self.inputs).argmax(dim=-1)  # (N,)
        correct = (predicted == self.labels).float()
        per_class = {name: round(100.0 * float(correct[self.labels == c].mean()), 2)
                     for c, name in enumerate(self.served.classes) if bool((self.labels == c).any())}
        return {"data": self.data, "size": len(self.labels), "top1": round(100.0 * float(correct.mean()), 2),
                "per_class": per_class, "examples": self.served.info().get("examples")}
