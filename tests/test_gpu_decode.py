"""The GPU JPEG path: its CPU-runnable parts here, the nvJPEG decode when CUDA is present."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from vlkit.data import ImageDataset
from vlkit.features.gpu_decode import (gpu_reproduces, is_jpeg, jpeg_paths, mode_resized_size,
                                       preprocess_params, resized_size)
from vlkit.features.pipeline import gpu_image_batches

SIZES = [(40, 30), (30, 40), (64, 64), (40, 30), (23, 57), (16, 12)]  # (width, height), repeats batch together


def _jpegs(folder, sizes=SIZES, mode="RGB"):
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, 40 * i % 255)], -1)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        path = folder / f"img{i}.jpg"
        Image.fromarray(img).convert(mode).save(path, quality=95)
        paths.append(str(path))
    return paths


def _reference(backbone, paths):
    return torch.stack([backbone.preprocess(Image.open(p).convert("RGB")) for p in paths])


def test_jpeg_detection(tmp_path):
    paths = _jpegs(tmp_path, SIZES[:2])
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert is_jpeg(paths[0]) and not is_jpeg(tmp_path / "x.png") and not is_jpeg(tmp_path / "missing.jpg")
    ds = ImageDataset([(p, 0) for p in paths], ["a"])
    assert jpeg_paths(ds) == paths and jpeg_paths(ds, 1, 2) == paths[1:]
    mixed = ImageDataset([(paths[0], 0), (str(tmp_path / "x.png"), 0)], ["a"])
    in_memory = ImageDataset([(Image.new("RGB", (8, 8)), 0)], ["a"])
    assert jpeg_paths(mixed) is None and jpeg_paths(in_memory) is None


def test_resized_size_matches_torchvision():
    from torchvision.transforms import functional as TF

    for h, w in [(30, 40), (40, 30), (57, 23), (64, 64), (375, 500), (333, 500)]:
        out = TF.resize(torch.zeros(3, h, w), 224, antialias=True)
        assert resized_size(h, w, 224) == tuple(out.shape[-2:])


def test_cpu_pipeline_matches_pil_preprocess(tmp_path, tiny_backbone):
    paths = _jpegs(tmp_path)
    batches = list(gpu_image_batches(paths, preprocess_params(tiny_backbone), batch_size=4, device="cpu",
                                     num_workers=0))
    assert [b.shape[0] for b in batches] == [4, 2]
    ours, ref = torch.cat(batches), _reference(tiny_backbone, paths)
    assert ours.shape == ref.shape
    # libjpeg vs PIL's decoder and tensor vs PIL bicubic: small pixel differences only
    assert (ours - ref).abs().mean() < 0.01 and (ours - ref).abs().max() < 0.1
    cos = torch.nn.functional.cosine_similarity(tiny_backbone.encode_images(ours), tiny_backbone.encode_images(ref))
    assert cos.min() >= 0.99


def test_grayscale_and_cmyk_jpegs_decode_to_rgb(tmp_path, tiny_backbone):
    (tmp_path / "cmyk").mkdir()
    paths = _jpegs(tmp_path, [(20, 20)], mode="L") + _jpegs(tmp_path / "cmyk", [(20, 20)], mode="CMYK")
    cfg = preprocess_params(tiny_backbone)
    batch = next(gpu_image_batches(paths, cfg, device="cpu", num_workers=0))
    assert batch.shape == (2, 3, *cfg.size) and torch.isfinite(batch).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG decode)")
def test_cuda_decode_matches_pil_path(tmp_path):
    import vlkit

    backbone = vlkit.load_backbone("test-tiny", device="cuda")
    paths = _jpegs(tmp_path, SIZES * 20)
    ours = torch.cat(list(gpu_image_batches(paths, preprocess_params(backbone), batch_size=32)))
    assert ours.device.type == "cuda"
    ref = _reference(backbone, paths).cuda()
    assert (ours - ref).abs().mean() < 0.03
    cos = torch.nn.functional.cosine_similarity(backbone.encode_images(ours), backbone.encode_images(ref))
    assert cos.min() >= 0.99


def test_pipeline_applies_to_jpegs_on_cuda_for_every_view(tmp_path, tiny_backbone, monkeypatch):
    from types import SimpleNamespace

    from vlkit.features.pipeline import pipeline_paths

    paths = _jpegs(tmp_path, SIZES[:2])
    ds = ImageDataset([(p, 0) for p in paths], ["a"])
    cuda_like = SimpleNamespace(device=torch.device("cuda"), preprocess_cfg=tiny_backbone.preprocess_cfg)
    assert pipeline_paths(tiny_backbone, ds) == paths  # the CPU runs the pipeline too
    assert pipeline_paths(cuda_like, ds) == paths and pipeline_paths(cuda_like, ds, 1, 2) == paths[1:]
    cuda_like.preprocess_cfg = replace(tiny_backbone.preprocess_cfg, size=(32, 48))  # not reproduced: PIL path
    assert pipeline_paths(cuda_like, ds) is None
    monkeypatch.setenv("VLKIT_GPU_DECODE", "0")  # the PIL path everywhere
    assert pipeline_paths(cuda_like, ds) is None and pipeline_paths(tiny_backbone, ds) is None


def test_prefetched_bytes_keeps_path_order_with_threads(tmp_path):
    from vlkit.features.gpu_decode import prefetched_bytes

    paths = []
    for i in range(23):
        path = tmp_path / f"{i}.bin"
        path.write_bytes(bytes([i]) * (i + 1))
        paths.append(str(path))
    for workers in (0, 3):
        batches = list(prefetched_bytes(paths, 5, workers, ahead=2))
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        flat = [t for b in batches for t in b]
        assert [(int(t[0]), len(t)) for t in flat] == [(i, i + 1) for i in range(23)]


@pytest.mark.parametrize("resize_mode, interpolation", [("shortest", "bilinear"), ("squash", "bicubic"),
                                                        ("squash", "bilinear"), ("longest", "bicubic")])
def test_cpu_pipeline_matches_each_open_clip_resize_mode(tmp_path, resize_mode, interpolation):
    """Every resize mode and interpolation of open_clip's configs, against open_clip's PIL transform."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(size=(40, 40), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation=interpolation,
                        resize_mode=resize_mode, fill_color=0)
    assert gpu_reproduces(cfg)
    paths = _jpegs(tmp_path, SIZES + [(90, 30), (30, 90)])
    ours = torch.cat(list(gpu_image_batches(paths, cfg, batch_size=4, device="cpu", num_workers=0)))
    reference = image_transform_v2(cfg, is_train=False)
    ref = torch.stack([reference(Image.open(p).convert("RGB")) for p in paths])
    assert ours.shape == ref.shape == (len(paths), 3, 40, 40)
    # libjpeg vs PIL decoding and tensor vs PIL resampling: about one grey level (0.02 here) at most;
    # the wrong interpolation is off by up to 0.08, the wrong resize mode by 1.8 or more
    diff = (ours - ref).abs()
    assert diff.mean() < 0.006 and diff.max() < 0.05, (float(diff.mean()), float(diff.max()))


def test_resize_geometry_matches_open_clip_exactly():
    """Sizes of each resize mode, and the crop/pad, equal open_clip's own functions (no decoding involved)."""
    from open_clip.transform import ResizeKeepRatio, center_crop_or_pad

    from vlkit.features.gpu_decode import crop_or_pad

    for h, w in [(30, 40), (40, 30), (57, 23), (64, 64), (375, 500), (333, 500), (7, 300)]:
        image = Image.new("RGB", (w, h))
        assert mode_resized_size(h, w, 224, "longest") == tuple(ResizeKeepRatio.get_params(image, (224, 224), 1.0))
        assert mode_resized_size(h, w, 224, "squash") == (224, 224)
        assert mode_resized_size(h, w, 224, "shortest") == resized_size(h, w, 224)
        x = torch.rand(2, 3, h, w) * 255
        for side in (24, 64):
            assert torch.equal(crop_or_pad(x, side, 7.0), center_crop_or_pad(x, [side, side], fill=7))


def test_non_square_configs_are_not_reproduced_on_the_gpu():
    from open_clip.transform import PreprocessCfg

    from vlkit.features.gpu_decode import resize_normalize

    cfg = PreprocessCfg(size=(32, 48))
    assert not gpu_reproduces(cfg) and gpu_reproduces(PreprocessCfg(size=32, resize_mode="longest"))
    with pytest.raises(ValueError, match="use the PIL path"):
        resize_normalize([torch.zeros(3, 8, 8, dtype=torch.uint8)], cfg)
