"""Zero-shot text weights from a template ensemble (Radford et al. 2021, Sec. 3.1.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vlkit.errors import VlkitError


def fill_templates(classnames: list[str], templates: list[str]) -> list[str]:
    """Every template filled with every class name, class-major: (C * T) strings."""
    for t in templates:
        if t.count("{}") != 1:
            raise VlkitError(f"prompt template {t!r} must contain exactly one '{{}}'")
    return [t.format(c) for c in classnames for t in templates]


def zero_shot_weights(backbone, classnames: list[str], templates: list[str], store=None) -> torch.Tensor:
    """(C, D): per class, the mean of the normalised template embeddings, renormalised."""
    texts = fill_templates(classnames, templates)
    feats = store.text_features(backbone, texts) if store is not None else backbone.encode_texts(texts).cpu()
    feats = feats.view(len(classnames), len(templates), -1)  # (C, T, D)
    return F.normalize(F.normalize(feats, dim=-1).mean(dim=1), dim=-1)


_EMBEDDINGS: dict[tuple[str, tuple[str, ...], int], torch.Tensor] = {}  # per-process memo


@torch.no_grad()
def class_text_embeddings(backbone, classnames: list[str], templates: list[str], batch_size: int = 512) -> torch.Tensor:
    """(C, D): per class, the mean over templates of the text encoder's *unnormalised* outputs.

    The prototypes CLAP/ZS-LP start from (``zero_shot_weights`` normalises each output
    before averaging and the mean after). Float32 on the CPU; memoised per process by the
    backbone's fingerprint and the exact strings.
    """
    texts = fill_templates(classnames, templates)
    key = (backbone.fingerprint, tuple(texts), len(classnames))
    if key not in _EMBEDDINGS:
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = backbone.tokenize(texts[start:start + batch_size])
            with backbone.autocast():
                out.append(backbone.model.encode_text(tokens).float().cpu())
        feats = torch.cat(out).view(len(classnames), len(templates), -1)  # (C, T, D)
        _EMBEDDINGS[key] = feats.mean(dim=1)
    return _EMBEDDINGS[key].clone()
