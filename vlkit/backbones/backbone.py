"""The frozen encoder: ``load_backbone`` and the :class:`Backbone` it returns."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
from pathlib import Path
from typing import Callable, Sequence

import open_clip
import torch
from PIL import Image
from torch import nn

from vlkit.backbones.preprocessing import (eval_transform, model_preprocess_cfg, published_preprocess,
                                          train_transform, transform_signature)
from vlkit.backbones.registry import offline_builder, offline_models
from vlkit.backbones.text_tower import TextTower, normalize, text_tower_of
from vlkit.errors import VlkitError

log = logging.getLogger("vlkit.backbone")
HUB_HOST = ("huggingface.co", 443)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast_dtype(device: torch.device, precision: str | None) -> torch.dtype | None:
    if precision is None:
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "amp": torch.bfloat16}
    if precision not in table:
        raise VlkitError(f"unknown precision {precision!r}; use one of {sorted(table)}")
    return table[precision]


class Backbone:
    """A frozen open_clip model with the calls vlkit needs (see DESIGN.md, Backbone).

    ``encode_images``/``encode_texts`` return L2-normalised float32 features and never
    track gradients. ``text`` is the hook from token embeddings onward for prompt
    learners; ``model`` is the open_clip module for methods that change a tower.
    ``preprocess_cfg`` is the open_clip preprocessing config the model carries;
    ``preprocess`` (open_clip's own evaluation transform) and ``train_transform`` are
    built on it.
    """

    def __init__(
        self, model: nn.Module, name: str, pretrained: str | None, tokenizer: Callable,
        device: torch.device, precision: str | None,
    ) -> None:
        self.name = name
        self.pretrained = pretrained
        self.device = device
        self.autocast_dtype = _autocast_dtype(device, precision)
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess_cfg = model_preprocess_cfg(self.model)
        height, width = self.preprocess_cfg.size
        self.image_size = height  # every open_clip config is square
        self.preprocess = eval_transform(self.preprocess_cfg)
        self.train_transform = train_transform(self.preprocess_cfg)
        self.text: TextTower = text_tower_of(self.model)
        self.logit_scale = float(self.model.logit_scale.exp().item())
        self._fingerprint: str | None = None
        with torch.no_grad():
            probe = torch.zeros(1, 3, height, width, device=device)
            self.embed_dim = int(self.model.encode_image(probe).shape[-1])

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, pretrained={self.pretrained!r}, device={self.device.type})"

    def transform_signature(self, train: bool = False) -> str:
        """A string naming the evaluation (or, with ``train``, augmentation) transform; see the store key."""
        return transform_signature(self.preprocess_cfg, train)

    @property
    def fingerprint(self) -> str:
        """A digest of every weight; it changes when any weight changes."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=12)
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = f"{self.name}-{digest.hexdigest()}"
        return self._fingerprint

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision on CUDA (bf16/fp16), a no-op on CPU."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images -> (N, D) normalised float32 features."""
        with self.autocast():
            feats = self.model.encode_image(images.to(self.device, non_blocking=True))
        return normalize(feats)

    @torch.no_grad()
    def encode_images_with_norms(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) -> (N, D) normalised float32 features and (N,) their L2 norms before normalising."""
        with self.autocast():
            feats = self.model.encode_image(images.to(self.device, non_blocking=True)).float()
        return normalize(feats), feats.norm(dim=-1)

    def encode_pil(self, images: Sequence[Image.Image], batch_size: int = 256) -> torch.Tensor:
        """PIL images -> (N, D) normalised features through ``preprocess``."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images[start:start + batch_size]])
            out.append(self.encode_images(batch).cpu())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """list of M strings -> (M, L) token ids on the backbone's device."""
        return self.tokenizer(list(texts)).to(self.device)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
        """list of M strings -> (M, D) normalised float32 features."""
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[start:start + batch_size])
            with self.autocast():
                out.append(normalize(self.model.encode_text(tokens)))
        return torch.cat(out) if out else torch.empty(0, self.embed_dim, device=self.device)


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(enabled: bool):
    """Switch huggingface_hub to its offline mode (HF_HUB_OFFLINE) for the block.

    The library reads the variable once at import, so setting the environment now is
    too late; its module constant is what its download functions consult.
    """
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip logs failures on the root logger; vlkit reports them as one error instead."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _known_model(name: str) -> bool:
    return name in open_clip.list_models() or name.startswith(("hf-hub:", "local-dir:"))


def _create_open_clip(name: str, pretrained: str | None) -> tuple[nn.Module, Callable]:
    """An open_clip model (carrying its preprocessing config) and its tokenizer.

    A weight tag brings its own preprocessing (open_clip merges it); random weights and
    local checkpoints get the preprocessing of ``name``'s published weights where they agree.
    """
    if not _known_model(name):
        offline = ", ".join(offline_models())
        raise VlkitError(
            f"unknown model {name!r}: use an open_clip name (see `python -c \"import open_clip; "
            f"print(open_clip.list_models())\"`) or an offline model ({offline})"
        )
    is_file = pretrained is not None and Path(pretrained).expanduser().exists()
    if pretrained and not is_file:
        if pretrained not in open_clip.list_pretrained_tags_by_model(name) and ("/" in pretrained or "." in pretrained):
            raise VlkitError(f"checkpoint file not found: {pretrained}")
        if pretrained not in open_clip.list_pretrained_tags_by_model(name):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise VlkitError(f"unknown pretrained tag {pretrained!r} for {name}; known tags: {tags}, or a local file")
    preprocess = {} if pretrained and not is_file else published_preprocess(name, warn=is_file)
    offline = bool(pretrained) and not is_file and not _hub_reachable()
    if offline:
        log.info("no network: looking for %s/%s in the local Hugging Face cache only", name, pretrained)
    try:
        with _hub_offline(offline), _quiet_root_logger():  # cache only: no minute of download retries
            model, _, _ = open_clip.create_model_and_transforms(
                name, pretrained=str(Path(pretrained).expanduser()) if is_file else pretrained, device="cpu",
                **preprocess,
            )
    except VlkitError:
        raise
    except Exception as exc:  # open_clip/hub raise many types; translate them to one line
        if pretrained and not is_file:
            raise VlkitError(
                f"cannot get weights {name}/{pretrained} (no network, nothing cached: {exc.__class__.__name__}); "
                f"download them elsewhere and pass the file: --pretrained /path/to/open_clip_model.safetensors"
            ) from None
        raise VlkitError(f"cannot load {name} with {pretrained!r}: {exc}") from None
    return model, open_clip.get_tokenizer(name)


def load_backbone(
    name: str, pretrained: str | None = None, device: str | torch.device | None = None,
    precision: str | None = None,
) -> Backbone:
    """Load a frozen CLIP: an open_clip name + tag or local checkpoint, or an offline model.

    ``load_backbone("ViT-B-16", "openai")``, ``load_backbone("ViT-B-32", "/ckpt.pt")``,
    ``load_backbone("vlkit-mini")``, ``load_backbone("test-tiny")``. Device defaults
    to CUDA when available; precision defaults to bf16/fp16 autocast on CUDA, fp32 on CPU.
    The transforms follow the model's open_clip preprocessing config: a tag's own, else
    that of the name's published weights (:func:`~vlkit.backbones.preprocessing.published_preprocess`).
    """
    device = torch.device(device) if device is not None else default_device()
    builder = offline_builder(name)
    if builder is not None:
        built = builder()
        model, tokenizer = built.model, built.tokenizer
        if pretrained:
            _load_offline_weights(model, name, pretrained)
    else:
        model, tokenizer = _create_open_clip(name, pretrained)
    return Backbone(model, name, pretrained, tokenizer, device, precision)


def _load_offline_weights(model: nn.Module, name: str, path: str) -> None:
    """Load ``path`` into an offline model: a full state dict, or only some towers' weights
    (vlkit-mini's image-tower file, ``vlkit_mini_image.safetensors`` of a training run)."""
    state = _read_checkpoint(path)
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise VlkitError(f"{path} is not a {name} checkpoint: it has weights {name} lacks "
                         f"({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}); pass a file saved "
                         f"from {name}, or an open_clip model name with --model")
    wrong = [k for k in state if state[k].shape != own[k].shape]
    if wrong:
        raise VlkitError(f"{path} does not match the {name} architecture: {wrong[0]} has shape "
                         f"{tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}")
    model.load_state_dict(state, strict=False)


def _read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise VlkitError(f"checkpoint file not found: {file}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    state = torch.load(file, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)
