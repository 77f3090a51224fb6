"""One attention module for every tower, with q/k/v/out as plain ``nn.Linear`` roles.

open_clip fuses q/k/v into one ``in_proj_weight`` (``nn.MultiheadAttention`` and its own
``Attention``); Hugging Face BERT keeps separate ``query``/``key``/``value`` layers. A
tuner should not care: :class:`TunableAttention` holds four ``nn.Linear`` roles whose
weights are *views* of the frozen tensors (no copy, no memory), an optional learned
key/value prefix (prefix tuning), and computes scaled dot-product attention. LoRA, IA3
and adapters then wrap a role; prefix tuning sets ``prefix``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _view_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` whose parameters share storage with (slices of) frozen tensors."""
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)  # (out, in), a view
    layer.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None
    return layer


class TunableAttention(nn.Module):
    """Self-attention ``out(softmax(q k^T / sqrt(d) + mask) v)`` over explicit q/k/v/out roles.

    ``call_style`` matches the caller: ``"mha"`` (``attn(q, k, v, need_weights=False,
    attn_mask=m)[0]``, open_clip's ResidualAttentionBlock), ``"open_clip"`` (``attn(x,
    attn_mask=m)``, CustomResidualAttentionBlock) or ``"bert"`` (``self(hidden,
    attention_mask=m) -> (out, None)``; the out-projection lives outside, so ``out_proj``
    is None). ``prefix`` (set by prefix tuning) returns (P, W) keys and values that every
    query may attend to.
    """

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear, out: nn.Linear | None, heads: int,
                 call_style: str, batch_first: bool = True, ln_q: nn.Module | None = None,
                 ln_k: nn.Module | None = None, ln_inner: nn.Module | None = None) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q, k, v, out
        self.heads = heads
        self.call_style = call_style
        self.batch_first = batch_first
        self.ln_q, self.ln_k, self.ln_inner = ln_q, ln_k, ln_inner
        self.prefix: nn.Module | None = None
        self.recording: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # set to a list to record k, v

    @property
    def width(self) -> int:
        """W, the model width keys and values live in."""
        return self.k_proj.out_features

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        mask = kwargs.get("attn_mask") if self.call_style != "bert" else kwargs.get("attention_mask")
        if self.call_style == "bert" and mask is None and args:
            mask = args[0]
        if not self.batch_first:
            x = x.transpose(0, 1)  # (L, N, W) -> (N, L, W)
        out = self.attend(x, mask)  # (N, L, W)
        if self.call_style == "bert":
            return out, None
        if not self.batch_first:
            out = out.transpose(0, 1)
        return (out, None) if self.call_style == "mha" else out

    def attend(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(N, L, W) -> (N, L, W); ``mask`` is additive float or boolean (True = keep)."""
        n, length, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (N, L, W) each
        if self.recording is not None:
            self.recording.append((k.detach(), v.detach()))
        if self.prefix is not None:
            pk, pv = self.prefix()  # (P, W) each
            k = torch.cat([pk.to(k.dtype).expand(n, -1, -1), k], dim=1)  # (N, P + L, W)
            v = torch.cat([pv.to(v.dtype).expand(n, -1, -1), v], dim=1)
            mask = _pad_mask(mask, pk.shape[0])
        q, k, v = (t.reshape(n, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (N, H, L, d)
        if self.ln_q is not None:
            q, k = self.ln_q(q), self.ln_k(k)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, H, L, d)
        out = out.transpose(1, 2).reshape(n, length, -1)  # (N, L, W)
        if self.ln_inner is not None:
            out = self.ln_inner(out)
        return self.out_proj(out) if self.out_proj is not None else out


def _pad_mask(mask: torch.Tensor | None, prefix: int) -> torch.Tensor | None:
    """Let every query see the ``prefix`` leading keys: pad the key axis of ``mask``."""
    if mask is None or prefix == 0:
        return mask
    shape = (*mask.shape[:-1], prefix)
    keep = torch.ones(shape, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool \
        else torch.zeros(shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([keep, mask], dim=-1)


def from_multihead(mha: nn.MultiheadAttention) -> TunableAttention:
    """Split ``nn.MultiheadAttention``'s fused ``in_proj_weight`` (3W, W) into q/k/v views."""
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn or mha.dropout:
        raise NotImplementedError("tuners support open_clip's plain self-attention (no kdim/vdim, bias_k, dropout)")
    w, b = mha.in_proj_weight, mha.in_proj_bias
    width = mha.embed_dim
    q, k, v = (_view_linear(w[i * width:(i + 1) * width], None if b is None else b[i * width:(i + 1) * width])
               for i in range(3))
    out = _view_linear(mha.out_proj.weight, mha.out_proj.bias)
    return TunableAttention(q, k, v, out, mha.num_heads, "mha", batch_first=mha.batch_first)


def from_open_clip_attention(attn: nn.Module) -> TunableAttention:
    """open_clip's custom ``Attention`` (fused ``in_proj_weight``, optional qk-norm/inner norm)."""
    if attn.logit_scale is not None or attn.head_scale is not None or attn.attn_drop.p or attn.out_drop.p:
        raise NotImplementedError("tuners do not support scaled-cosine attention, head scaling or attention dropout")
    w, b = attn.in_proj_weight, attn.in_proj_bias
    width = w.shape[1]
    q, k, v = (_view_linear(w[i * width:(i + 1) * width], None if b is None else b[i * width:(i + 1) * width])
               for i in range(3))
    out = _view_linear(attn.out_proj.weight, attn.out_proj.bias)
    qk_norm = not isinstance(attn.ln_q, nn.Identity)
    inner = None if isinstance(attn.ln_inner, nn.Identity) else attn.ln_inner
    return TunableAttention(q, k, v, out, attn.num_heads, "open_clip", ln_q=attn.ln_q if qk_norm else None,
                            ln_k=attn.ln_k if qk_norm else None, ln_inner=inner)


def from_bert_self_attention(attn: nn.Module) -> TunableAttention:
    """A Hugging Face ``BertSelfAttention``-like module (separate query/key/value Linear)."""
    if getattr(attn, "is_decoder", False) or getattr(attn, "is_causal", False):
        raise NotImplementedError("tuners support bidirectional BERT-style text encoders only")
    return TunableAttention(attn.query, attn.key, attn.value, None, attn.num_attention_heads, "bert")
