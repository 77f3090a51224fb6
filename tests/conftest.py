"""Shared fixtures: the tiny offline backbone, a synthetic colour dataset, a cached task."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

# Tests never touch the user's cache: one temp cache for the session unless a test overrides it.
os.environ.setdefault("VLKIT_CACHE", tempfile.mkdtemp(prefix="vlkit-test-cache-"))
os.environ.setdefault("VLKIT_QUIET", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

import vlkit  # noqa: E402
from vlkit.data import ImageDataset  # noqa: E402
from vlkit.protocols.fewshot import build_task  # noqa: E402
from vlkit.features.store import FeatureStore  # noqa: E402

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200), "yellow": (220, 210, 40)}


def colour_dataset(per_class: int = 12, seed: int = 0, size: int = 32, name: str = "colours") -> ImageDataset:
    """Noisy solid-colour squares, one class per colour: learnable from any image features."""
    rng = np.random.default_rng(seed)
    items = []
    for label, rgb in enumerate(COLOURS.values()):
        for _ in range(per_class):
            noise = rng.normal(0, 25, (size, size, 3))
            img = np.clip(np.array(rgb)[None, None] + noise, 0, 255).astype(np.uint8)
            items.append((Image.fromarray(img), label))
    return ImageDataset(items, list(COLOURS), name=name, identity=f"{name}-{per_class}-{seed}-{size}")


@pytest.fixture(scope="session")
def tiny_backbone() -> vlkit.Backbone:
    """The random-init test-tiny CLIP on CPU."""
    return vlkit.load_backbone("test-tiny", device="cpu")


@pytest.fixture(scope="session")
def session_store(tmp_path_factory) -> FeatureStore:
    """One feature store for the session (features are cached across tests)."""
    return FeatureStore(tmp_path_factory.mktemp("store"), num_workers=0)


@pytest.fixture(scope="session")
def colour_pool() -> ImageDataset:
    """Training pool: 4 colour classes x 12 images."""
    return colour_dataset(12, seed=0)


@pytest.fixture(scope="session")
def colour_test() -> ImageDataset:
    """A disjoint test set: 4 colour classes x 8 images."""
    return colour_dataset(8, seed=1, name="colours-test")


@pytest.fixture(scope="session")
def colour_task(tiny_backbone, colour_pool, session_store):
    """A 4-shot task with 2 cached augmented views, with image datasets attached."""
    return build_task(tiny_backbone, colour_pool, shots=4, seed=0, store=session_store, views=2, with_images=True)


@pytest.fixture(scope="session")
def colour_adapt_task(tiny_backbone, session_store):
    """Source: colour squares (labelled); target: differently noised squares (unlabelled)."""
    from vlkit.protocols.adaptation import build_adaptation_task
    from vlkit.data.guard import HiddenLabelDataset

    source = colour_dataset(8, seed=0, name="colours-src")
    source_val = colour_dataset(3, seed=5, name="colours-src-val")
    target = HiddenLabelDataset(colour_dataset(6, seed=7, name="colours-tgt"))
    target.domain = "noisy"
    return build_adaptation_task(tiny_backbone, source, source_val, target, session_store, views=2, seed=0)
