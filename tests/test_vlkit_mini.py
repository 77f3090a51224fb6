"""vlkit-mini: loads offline from the shipped weights, the text hook is exact, and it is accurate."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import vlkit
from vlkit.backbones import mini
from vlkit.backbones.text_tower import HFTextTower


@pytest.fixture(scope="module")
def backbone() -> vlkit.Backbone:
    return vlkit.load_backbone("vlkit-mini", device="cpu")


def test_loads_offline_with_its_contract(backbone: vlkit.Backbone) -> None:
    assert backbone.embed_dim == mini.MINI_EMBED_DIM == 384
    assert backbone.image_size == mini.MINI_IMAGE_SIZE
    assert isinstance(backbone.text, HFTextTower)
    assert backbone.text.context_length == mini.MINI_CONTEXT_LENGTH
    assert not any(p.requires_grad for p in backbone.model.parameters())
    visual = backbone.model.visual
    assert isinstance(visual.conv1, mini.ConvStem)
    assert sum(p.numel() for p in visual.parameters()) < 10_000_000
    feats = backbone.encode_images(torch.zeros(2, 3, 32, 32))
    assert feats.shape == (2, 384) and torch.allclose(feats.norm(dim=-1), torch.ones(2))
    assert 1.0 < backbone.logit_scale <= 100.0
    assert mini.recipe()["weights"]["file"] == mini.IMAGE_WEIGHTS.name


def test_stem_strides_set_the_token_grid() -> None:
    # experiments (scripts/train_vlkit_mini.py --vision) change the grid through the stem's strides
    shipped = mini.ConvStem(192, mini.MINI_VISION["stem_channels"])
    assert shipped.stride == 16 and shipped(torch.zeros(1, 3, 32, 32)).shape == (1, 192, 2, 2)
    stem = mini.ConvStem(192, (32, 64, 128), (2, 2, 1))
    assert stem.stride == 4 and stem(torch.zeros(1, 3, 32, 32)).shape == (1, 192, 8, 8)
    with pytest.raises(vlkit.VlkitError, match="stem has stride 4; patch_size must match, got 16"):
        mini.build_mini_model({"stem_strides": [2, 2, 1, 1]})


def test_cnn_tower_round_trips_through_the_weights_format(tmp_path) -> None:
    # the all-convolutional experiment tower (mini_tower_search's "cnn" rows) saves and loads
    # through the same image_state / load_image_weights as the shipped ViT
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = mini.build_mini_model({"tower": "cnn"})
    assert isinstance(model.visual, mini.ConvTower)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.visual(x)  # (2, 384)
    save_file({k: v.contiguous() for k, v in mini.image_state(model).items()}, str(tmp_path / "w.safetensors"))
    other = mini.build_mini_model({"tower": "cnn"})
    mini.load_image_weights(other, tmp_path / "w.safetensors")
    with torch.no_grad():
        assert before.shape == (2, 384) and torch.equal(other.visual(x), before)
    with pytest.raises(vlkit.VlkitError, match="does not match the vlkit-mini architecture"):
        mini.load_image_weights(mini.build_mini_model(), tmp_path / "w.safetensors")


def test_a_run_loads_in_the_architecture_it_recorded(tmp_path) -> None:
    # a run trained before the defaults changed (4x4 tokens, an empty --vision) still loads
    from safetensors.torch import save_file

    first = {"stem_channels": [32, 64, 128], "patch_size": 8}
    torch.manual_seed(0)
    model = mini.build_mini_model(first)
    save_file({k: v.contiguous() for k, v in mini.image_state(model).items()}, str(tmp_path / mini.IMAGE_WEIGHTS.name))
    record = {"architecture": {"image_size": 32, **mini.MINI_VISION, **first, "image_tower_parameters": 1},
              "recipe": {"vision": "{}"}}
    (tmp_path / mini.RECIPE_FILE.name).write_text(json.dumps(record))
    assert mini.recorded_vision(record) == mini.recorded_vision({"architecture": {**mini.MINI_VISION, **first}})
    loaded = mini.load_run(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert loaded.visual.conv1.stride == 8 and torch.equal(loaded.visual(x), model.visual(x))


def test_text_tower_is_the_pretrained_minilm(backbone: vlkit.Backbone) -> None:
    # sentence-transformers' all-MiniLM-L6-v2 puts paraphrases close and unrelated text far
    a, b, c = backbone.encode_texts(["a photo of a dog.", "a picture of a puppy.", "a stock market report."])
    assert float(a @ b) > float(a @ c) + 0.3


def test_text_hook_matches_encode_texts(backbone: vlkit.Backbone) -> None:
    texts = ["a photo of a sneaker.", "an ankle boot", "a black and white photo of a t-shirt, a type of top."]
    tokens = backbone.tokenize(texts)
    hook = F.normalize(backbone.text.encode_embeddings(backbone.text.token_embedding(tokens), tokens), dim=-1)
    assert torch.allclose(hook, backbone.encode_texts(texts), atol=1e-5)


def test_zero_shot_fashion_mnist_slice_is_well_above_chance(backbone: vlkit.Backbone) -> None:
    from vlkit.data.offline import load_offline

    test = load_offline("fashion-mnist-mini", "test")  # vendored: 50 per class
    feats = backbone.encode_pil([test.image(i) for i in range(len(test))])
    weights = F.normalize(backbone.encode_texts([f"a photo of a {c}." for c in test.classnames]), dim=-1)
    acc = float(((feats @ weights.T).argmax(1) == torch.tensor(test.labels)).float().mean())
    assert acc >= 0.2, f"zero-shot top-1 {acc:.3f} on the Fashion-MNIST slice (chance 0.1)"


def test_shipped_weights_record_a_permissive_corpus_and_ship_its_attribution() -> None:
    import re
    import tomllib
    from pathlib import Path

    record = mini.recipe()
    corpus = record["data"]["corpus"]
    allowed = {"MIT", "Apache-2.0", "ISC", "BSD-2-Clause", "BSD-3-Clause", "CC0-1.0", "Unlicense", "OFL-1.1",
               "CC-BY-3.0", "CC-BY-4.0"}  # the list; CC-BY only with the attribution file
    assert record["version"] == 2 and set(corpus["licences_kept"]) <= allowed
    attribution = (mini.RECIPE_FILE.parent / "ATTRIBUTION.md").read_text()
    rows = re.findall(r"^\| .*\(`([^`]+)`\) \| .* \(([A-Za-z0-9.-]+), [^|]*\) \| (\d+) \|$", attribution, re.M)
    assert len(rows) == corpus["sets_used"], "one attribution row per icon set used"
    assert {licence for _, licence, _ in rows} <= allowed
    assert not any(name.startswith(tuple(corpus["emoji_prefixes_dropped"])) for name, _, _ in rows)
    assert corpus["source"].removeprefix("npm ") in attribution
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "ATTRIBUTION.md" in pyproject["tool"]["setuptools"]["package-data"]["vlkit.backbones.weights"]


def test_typeset_digits_are_ten_distinct_inked_glyphs_per_font_and_stroke() -> None:
    # scripts/train_vlkit_mini.py --glyphs (mini_tower_search's "glyphs" row): every listed font
    # must exist in matplotlib and draw ten different digits, labelled in order
    train = _training_script()
    images, metas, owner, summary = train.load_glyphs()
    per_font = len(train.GLYPH_STROKES) * 10
    assert images.shape == (len(train.GLYPH_FONTS) * per_font, 4, 64, 64) and summary["glyph_images"] == len(images)
    assert [m["name"] for m in metas] == [f"digit {w}" for w in train.DIGIT_WORDS]
    assert owner.tolist() == list(range(10)) * (len(images) // 10)
    for start in range(0, len(images), 10):
        alpha = images[start:start + 10, 3]  # (10, 64, 64): one font and stroke, digits 0-9
        assert (alpha.reshape(10, -1).max(1) == 255).all() and len({a.tobytes() for a in alpha}) == 10
        assert not images[start:start + 10, :3].any()  # black ink; the alpha channel carries the glyph


def _training_script():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_vlkit_mini.py"
    spec = importlib.util.spec_from_file_location("train_vlkit_mini", script)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    return train


def test_fill_holes_fills_what_a_border_flood_cannot_reach() -> None:
    # the photo-like augmentation (scripts/train_vlkit_mini_v2.py --fill): an outline becomes its silhouette;
    # scipy's binary_fill_holes (4-connected background) is the independent reference
    from scipy.ndimage import binary_fill_holes

    train = _training_script()
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    radius = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2).sqrt()
    ring = ((radius > 8) & (radius < 10)).float()  # a closed outline
    open_ring = ring.clone()
    open_ring[14:18, 24:] = 0  # a gap in it: nothing is enclosed
    diagonal = torch.eye(32).flip(0)  # a one-pixel diagonal line splits the square corner to corner
    generator = torch.Generator().manual_seed(0)
    blobs = (torch.rand(4, 32, 32, generator=generator) > 0.55).float()  # random walls and holes
    shapes = torch.stack([ring, open_ring, diagonal, *blobs])[:, None]  # (7, 1, 32, 32)
    filled = train.fill_holes(shapes * 0.9)
    for shape, got in zip(shapes[:, 0], filled[:, 0]):
        expected = torch.from_numpy(binary_fill_holes(shape.numpy() > 0.5))
        assert torch.equal(got == 1.0, expected), "filled exactly the enclosed pixels (and the drawing)"
    assert (filled[0, 0][radius < 8] == 1).all() and (filled[1, 0][radius < 8] == 0).all()


def test_fill_is_drawn_only_for_fillable_views_and_v1_draws_nothing_for_it() -> None:
    train = _training_script()
    rgba = torch.zeros(6, 4, 32, 32, dtype=torch.uint8)
    rgba[:, 3, 6:26, 6:8] = rgba[:, 3, 6:26, 24:26] = rgba[:, 3, 6:8, 6:26] = rgba[:, 3, 24:26, 6:26] = 255  # squares
    plain = dict(train.AUG, **{k: 0.0 for k in ("gray", "silhouette", "gray_all", "threshold", "invert", "blur",
                                                "lowres", "noise", "contrast", "brightness")},
                 bg_black=1.0, scale=1.0, aspect=1.0, rotate=0.0, shift=0.0, gamma=1.0)
    fillable = torch.tensor([True, True, True, False, False, False])
    views = train.augment(rgba, torch.Generator().manual_seed(0), 32, dict(plain, fill=1.0), fillable)
    centre = views[:, :, 12:20, 12:20].mean(dim=(1, 2, 3))  # (6,) inside the square
    assert (centre[:3] > 0.2).all() and (centre[3:] < 0.01).all()  # filled grey vs the black inside of an outline
    a = train.augment(rgba, torch.Generator().manual_seed(1), 32, train.AUG)
    b = train.augment(rgba, torch.Generator().manual_seed(1), 32, dict(train.AUG, fill=0.0))
    assert torch.equal(a, b), "fill 0 leaves v1's random stream as it was"


def test_damaged_weights_file_fails_naming_the_file(tmp_path) -> None:
    # a truncated download or a bad disk must stop the load with the file's path, never load half a tower
    damaged = tmp_path / mini.IMAGE_WEIGHTS.name
    damaged.write_bytes(mini.IMAGE_WEIGHTS.read_bytes()[:100_000])
    with pytest.raises(vlkit.VlkitError, match=f"weights file {damaged} is damaged"):
        mini.load_image_weights(mini.build_mini_model(), damaged)


def test_pretrained_file_replaces_only_the_towers_it_holds(tmp_path) -> None:
    # `--model vlkit-mini --pretrained RUN/vlkit_mini_image.safetensors` evaluates a training run
    from safetensors.torch import save_file

    shipped = vlkit.load_backbone("vlkit-mini", device="cpu")
    state = {k: v.clone() for k, v in mini.image_state(shipped.model).items()}
    state["visual.proj"] = state["visual.proj"] * -1  # a different image tower
    save_file(state, str(tmp_path / "image.safetensors"))
    other = vlkit.load_backbone("vlkit-mini", str(tmp_path / "image.safetensors"), device="cpu")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(other.encode_images(x), -shipped.encode_images(x), atol=1e-5)
    assert torch.equal(other.encode_texts(["a dog"]), shipped.encode_texts(["a dog"]))
    assert other.fingerprint != shipped.fingerprint
    save_file({"text.bogus": torch.zeros(1)}, str(tmp_path / "bogus.safetensors"))
    with pytest.raises(vlkit.VlkitError, match="is not a vlkit-mini checkpoint"):
        vlkit.load_backbone("vlkit-mini", str(tmp_path / "bogus.safetensors"), device="cpu")
    save_file({"visual.proj": torch.zeros(3, 3)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(vlkit.VlkitError, match="does not match the vlkit-mini architecture"):
        vlkit.load_backbone("vlkit-mini", str(tmp_path / "shape.safetensors"), device="cpu")
