"""vlkit-mini v2's icon corpus: which sets are kept, how names become concepts, the split.

The builder lives in ``scripts/build_mini_corpus.py``; these tests exercise its pure
functions (no npm download, no rendering except one tiny SVG when resvg-py is present).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_mini_corpus.py"
if not SCRIPT.is_file():  # a wheel install runs the tests without scripts/
    pytest.skip("scripts/build_mini_corpus.py is not in this checkout", allow_module_level=True)
spec = importlib.util.spec_from_file_location("build_mini_corpus", SCRIPT)
corpus = importlib.util.module_from_spec(spec)
sys.modules["build_mini_corpus"] = corpus
spec.loader.exec_module(corpus)


def info(spdx: str, category: str = "UI 24px", hidden: bool = False) -> dict:
    return {"license": {"spdx": spdx, "title": spdx}, "category": category, "hidden": hidden}


@pytest.mark.parametrize("prefix,meta,kept", [
    ("mdi", info("Apache-2.0"), True),
    ("tabler", info("MIT"), True),
    ("game-icons", info("CC-BY-3.0"), True),          # kept, with attribution shipped
    ("arcticons", info("CC-BY-SA-4.0"), False),       # share-alike
    ("cbi", info("CC-BY-NC-SA-4.0"), False),          # non-commercial
    ("some-gpl", info("GPL-3.0-or-later"), False),
    ("twemoji", info("CC-BY-4.0", "Emoji"), False),   # every emoji set stays out
    ("noto-v1", info("Apache-2.0", "Emoji"), False),
    ("fluent-emoji", info("MIT", "Thematic"), False), # hidden emoji set, by prefix
    ("logos", info("CC0-1.0", "Logos"), False),
    ("fa6-brands", info("CC-BY-4.0"), False),
    ("zmdi", info("OFL-1.1", hidden=True), False),    # deprecated duplicate
])
def test_sets_are_kept_by_licence_and_kind(prefix: str, meta: dict, kept: bool) -> None:
    assert (corpus.keep_set(prefix, meta) is None) is kept


@pytest.mark.parametrize("name,expected", [
    ("tshirt-crew-outline", ("tshirt crew", "tshirt crew")),
    ("bell-off", ("bell", "crossed out bell")),
    ("bell-off-outline", ("bell", "crossed out bell")),
    ("numeric-7-box", ("digit seven", "digit seven")),
    ("7", ("digit seven", "digit seven")),
    ("baseline-location-disabled", ("location disabled", "location disabled")),
    ("arrow-left-24-filled", ("arrow left", "arrow left")),
    ("urine-sample-2x", ("urine sample", "urine sample")),
    ("brand-github", None),
    ("reddit-logo", None),
    ("bear-right", None),                             # a road sign, not the animal
    ("24-filled", None),
])
def test_names_become_concepts(name: str, expected: tuple[str, str] | None) -> None:
    assert corpus.concept_of(name) == expected


def test_split_keeps_style_variants_together() -> None:
    variants = ["dog", "dog-outline", "dog-off", "dog-24-filled"]
    bases = {corpus.concept_of(v)[0] for v in variants}
    assert bases == {"dog"}
    splits = {corpus.split_of(b, 0.05) for b in bases}
    assert len(splits) == 1
    names = [f"thing{i}" for i in range(4000)]
    share = sum(corpus.split_of(n, 0.05) == "val" for n in names) / len(names)
    assert 0.04 < share < 0.06


def test_render_drops_blank_and_white_icons() -> None:
    pytest.importorskip("resvg_py")
    data = {"width": 24, "height": 24}
    square = {"body": '<path fill="currentColor" d="M4 4h16v16H4z"/>'}
    white = {"body": '<path fill="#fff" d="M4 4h16v16H4z"/>'}
    empty = {"body": '<path fill="currentColor" d=""/>'}
    rgba = corpus.render((corpus.svg_of(data, square, 32), 32))
    assert rgba is not None and rgba.shape == (4, 32, 32)
    assert rgba[3, 16, 16] == 255 and rgba[:3, 16, 16].max() == 0  # black, opaque inside
    assert rgba[3, 1, 1] == 0                                      # transparent outside
    assert corpus.render((corpus.svg_of(data, white, 32), 32)) is None
    assert corpus.render((corpus.svg_of(data, empty, 32), 32)) is None
