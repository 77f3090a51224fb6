"""The one hook into a CLIP text tower from token embeddings onward.

Prompt learners replace some token embeddings with learned vectors and run the rest
of the tower. Two tower kinds exist in open_clip: the causal CLIP transformer
(pooled at the end-of-text token) and Hugging Face encoders (mean/CLS pooled, with a
padding mask). Both expose the same three calls, so no method touches open_clip
internals.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextTower:
    """Interface: ``token_embedding``, ``encode_embeddings``, and ``width``."""

    width: int
    context_length: int

    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """(M, L) token ids -> (M, L, W) input embeddings (before positions)."""
        raise NotImplementedError

    def encode_embeddings(self, embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Run the tower from (M, L, W) embeddings; ``tokens`` (M, L) locate the pooled
        token and the padding. Returns (M, D) projected, *unnormalised* features."""
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        """The tower's parameters (for freezing checks)."""
        raise NotImplementedError


class CausalTextTower(TextTower):
    """open_clip's CLIP text transformer (``model`` is a CLIP or a TextTransformer).

    ``encode_embeddings`` trims every sequence to the longest pooled position + 1: the
    mask is causal and the output is read at the end-of-text token, so later positions
    cannot change the result. This is exact and makes short prompts several times
    cheaper than running all 77 positions.
    """

    def __init__(self, owner: nn.Module, pool_type: str, eos_token_id: int | None):
        self.owner = owner
        self.pool_type = pool_type
        self.eos_token_id = eos_token_id
        self.width = owner.token_embedding.weight.shape[1]
        self.context_length = owner.positional_embedding.shape[0]
        if getattr(owner, "cls_emb", None) is not None:
            raise NotImplementedError("text towers with a CLS embedding (CoCa) are not supported by the prompt hook")

    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.owner.token_embedding(tokens)

    def pooled_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """(M,) position of the token the tower pools."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self.eos_token_id).int().argmax(dim=-1)
        if self.pool_type == "last":
            return torch.full((tokens.shape[0],), tokens.shape[1] - 1, device=tokens.device)
        raise NotImplementedError(f"text pool type {self.pool_type!r} is not supported by the prompt hook")

    def encode_embeddings(self, embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        owner = self.owner
        pooled = self.pooled_index(tokens)  # (M,)
        attn_mask = owner.attn_mask
        length = embeds.shape[1]
        if attn_mask is not None and self.pool_type != "last":
            length = int(pooled.max()) + 1  # causal: later positions cannot matter
            attn_mask = attn_mask[:length, :length]
        cast = owner.transformer.get_cast_dtype()
        x = embeds[:, :length].to(cast) + owner.positional_embedding[:length].to(cast)  # (M, L', W)
        x = owner.transformer(x, attn_mask=attn_mask)
        x = owner.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), pooled]  # (M, W)
        proj = owner.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def parameters(self) -> list[nn.Parameter]:
        return list(self.owner.parameters()) if not hasattr(self.owner, "visual") else [
            p for n, p in self.owner.named_parameters() if not n.startswith("visual.")
        ]


class HFTextTower(TextTower):
    """An open_clip ``HFTextEncoder`` (e.g. MiniLM in vlkit-mini): bidirectional, padded."""

    BUCKET_FROM = 64  # prompts per batch from which one pass per length beats one padded pass

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder
        self.pad_id = encoder.config.pad_token_id
        self.embeddings = encoder.transformer.embeddings
        self.width = self.embeddings.word_embeddings.weight.shape[1]
        self.context_length = encoder.context_length

    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embeddings.word_embeddings(tokens)

    def encode_embeddings(self, embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Padding is masked out, so each sequence runs only as long as its own tokens: the all-pad tail is
        dropped, and a batch of at least ``BUCKET_FROM`` sequences runs as one pass per distinct length
        (CoCoOp scores images x classes prompts whose class names differ in length: 12 % of the tokens of
        "a photo of a" prompts for Fashion-MNIST's names are padding, benchmarks/prompt_scoring.py).
        Exact up to float rounding."""
        mask = (tokens != self.pad_id).long()  # (M, L)
        lengths = mask.sum(dim=1)  # (M,)
        distinct = lengths.unique()
        if len(tokens) < self.BUCKET_FROM or len(distinct) == 1:
            return self._encode(embeds, mask, int(lengths.max()))
        out = None
        for length in distinct.tolist():
            rows = (lengths == length).nonzero().squeeze(1)  # (m,)
            part = self._encode(embeds[rows], mask[rows], length)  # (m, D)
            out = part.new_empty(len(tokens), part.shape[1]) if out is None else out
            out[rows] = part
        return out

    def _encode(self, embeds: torch.Tensor, mask: torch.Tensor, length: int) -> torch.Tensor:
        """(M, L, W) embeddings, (M, L) mask -> (M, D), run on the first ``length`` positions only."""
        out = self.encoder.transformer(inputs_embeds=embeds[:, :length], attention_mask=mask[:, :length])
        pooled = self.encoder.pooler(out, mask[:, :length])  # (M, W)
        return self.encoder.proj(pooled)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())


def text_tower_of(model: nn.Module) -> TextTower:
    """Pick the hook for an open_clip model's text tower."""
    eos = getattr(model, "text_eos_id", None)
    if hasattr(model, "token_embedding") and hasattr(model, "transformer"):
        return CausalTextTower(model, getattr(model, "text_pool_type", "argmax"), eos)
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "token_embedding"):
        return CausalTextTower(text, getattr(text, "pool_type", "argmax"), getattr(text, "eos_id", eos))
    if text is not None and hasattr(text, "transformer") and hasattr(text, "pooler"):
        return HFTextTower(text)
    raise NotImplementedError(f"no text-tower hook for {type(model).__name__}")


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension in float32."""
    return F.normalize(x.float(), dim=-1)
