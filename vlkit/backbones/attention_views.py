"""Attention of the frozen towers as explicit q/k/v/out projections (part of the surgery module).

open_clip fuses q/k/v into one ``in_proj_weight`` (``nn.MultiheadAttention`` and its own
``Attention``); Hugging Face BERT keeps separate ``query``/``key``/``value`` layers.
:class:`SplitAttention` holds four ``nn.Linear`` roles whose weights are *views* of the
frozen tensors (no copy, no memory) and computes scaled dot-product attention, with an
optional learned key/value prefix every query may attend to (prefix tuning). LoRA,
IA3 and adapters wrap a role (:func:`vlkit.backbones.surgery.wrap_roles`).

:func:`encode_shared_prefix` runs a causal text tower on G shared prefixes x C suffixes,
computing each prefix once: the suffix rows attend to the prefix rows' keys/values as an
extra prefix. Only this file and :mod:`vlkit.backbones.surgery` read attention internals.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.backbones.text_tower import CausalTextTower, TextTower


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, W) -> (N, H, L, W / H)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def pad_mask(mask: torch.Tensor | None, prefix: int) -> torch.Tensor | None:
    """Let every query see ``prefix`` extra leading keys: pad the key axis of ``mask``."""
    if mask is None or prefix == 0:
        return mask
    shape = (*mask.shape[:-1], prefix)
    keep = torch.ones(shape, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool \
        else torch.zeros(shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([keep, mask], dim=-1)


def _view_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` whose parameters share storage with (slices of) frozen tensors."""
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)  # (out, in), a view
    layer.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None
    return layer


def _fused_views(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """q, k, v ``nn.Linear`` views of a fused (3W, W) projection (rows [0, W), [W, 2W), [2W, 3W))."""
    width = weight.shape[1]
    return tuple(_view_linear(weight[i * width:(i + 1) * width],  # type: ignore[return-value]
                              None if bias is None else bias[i * width:(i + 1) * width]) for i in range(3))


class SplitAttention(nn.Module):
    """Self-attention ``out(softmax(q k^T / sqrt(d) + mask) v)`` over explicit q/k/v/out roles.

    ``call_style`` matches the caller: ``"mha"`` (``attn(q, k, v, need_weights=False,
    attn_mask=m)[0]``, open_clip's ResidualAttentionBlock), ``"open_clip"`` (``attn(x,
    attn_mask=m)``, CustomResidualAttentionBlock) or ``"bert"`` (``self(hidden,
    attention_mask=m) -> (out, None)``; the out-projection lives outside, so ``out_proj``
    is None). ``prefix`` (a module returning (P, W) keys and values) adds keys/values that
    every query may attend to. ``recording``, when a list, collects each call's (k, v).
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
        self.recording: list[tuple[torch.Tensor, torch.Tensor]] | None = None

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
            mask = pad_mask(mask, pk.shape[0])
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


def split_attention(attn: nn.Module) -> SplitAttention:
    """The :class:`SplitAttention` view of a tower's attention module (weights shared, not copied).

    Supports ``nn.MultiheadAttention`` (open_clip's ResidualAttentionBlock), open_clip's
    own ``Attention`` (CustomResidualAttentionBlock, optional qk-norm and inner norm) and
    Hugging Face ``BertSelfAttention``-like modules (separate query/key/value).
    """
    if isinstance(attn, SplitAttention):
        return attn
    if isinstance(attn, nn.MultiheadAttention):
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn or attn.dropout:
            raise NotImplementedError("tuners support open_clip's plain self-attention "
                                      "(no kdim/vdim, bias_k, dropout)")
        q, k, v = _fused_views(attn.in_proj_weight, attn.in_proj_bias)
        out = _view_linear(attn.out_proj.weight, attn.out_proj.bias)
        return SplitAttention(q, k, v, out, attn.num_heads, "mha", batch_first=attn.batch_first)
    if hasattr(attn, "in_proj_weight"):  # open_clip.transformer.Attention
        if attn.logit_scale is not None or attn.head_scale is not None or attn.attn_drop.p or attn.out_drop.p:
            raise NotImplementedError("tuners do not support scaled-cosine attention, head scaling or "
                                      "attention dropout")
        q, k, v = _fused_views(attn.in_proj_weight, attn.in_proj_bias)
        out = _view_linear(attn.out_proj.weight, attn.out_proj.bias)
        qk_norm = not isinstance(attn.ln_q, nn.Identity)
        inner = None if isinstance(attn.ln_inner, nn.Identity) else attn.ln_inner
        return SplitAttention(q, k, v, out, attn.num_heads, "open_clip", ln_q=attn.ln_q if qk_norm else None,
                              ln_k=attn.ln_k if qk_norm else None, ln_inner=inner)
    if hasattr(attn, "query") and hasattr(attn, "key") and hasattr(attn, "value"):
        if getattr(attn, "is_decoder", False) or getattr(attn, "is_causal", False):
            raise NotImplementedError("tuners support bidirectional BERT-style text encoders only")
        return SplitAttention(attn.query, attn.key, attn.value, None, attn.num_attention_heads, "bert")
    raise NotImplementedError(f"no q/k/v view for attention module {type(attn).__name__}")


# ---- the shared-prefix speed trick of the causal CLIP text tower --------------------------------
def _plain_block(block: nn.Module) -> bool:
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(block, "attn", None)
    return (type(block) is ResidualAttentionBlock and isinstance(attn, nn.MultiheadAttention)
            and attn.batch_first and attn._qkv_same_embed_dim and not hasattr(block, "ln_1_kv"))


def supports_shared_prefix(tower: TextTower) -> bool:
    """Whether :func:`encode_shared_prefix` applies: a causal, batch-first CLIP text tower of
    open_clip's plain blocks, pooled at a token that depends on the text (not the last slot)."""
    if not isinstance(tower, CausalTextTower) or tower.pool_type == "last":
        return False
    owner = tower.owner
    if owner.attn_mask is None or not owner.transformer.batch_first:
        return False
    return all(_plain_block(b) for b in owner.transformer.resblocks)


def encode_shared_prefix(tower: CausalTextTower, prefix: torch.Tensor, suffix: torch.Tensor,
                         tokens: torch.Tensor) -> torch.Tensor:
    """Text features of every sequence ``[prefix g][suffix c]``: (G, C, D), unnormalised.

    ``prefix`` (G, P, W) and ``suffix`` (C, L - P, W) are input token embeddings (before
    positions); ``tokens`` (C, L) locate each sequence's pooled token (after the prefix).
    The tower is causal, so the prefix rows' hidden states are the same for every suffix:
    they are computed once per group, and each suffix attends to their keys/values as an
    extra prefix. Exact in real arithmetic; floats differ from the plain path by rounding.
    Call only where :func:`supports_shared_prefix` holds.
    """
    owner = tower.owner
    g, p, c = prefix.shape[0], prefix.shape[1], suffix.shape[0]
    pooled = tower.pooled_index(tokens)  # (C,)
    end = int(pooled.max()) + 1
    cast = owner.transformer.get_cast_dtype()
    pos = owner.positional_embedding.to(cast)
    x_p = prefix.to(cast) + pos[:p]  # (G, P, W)
    x_s = (suffix[:, :end - p].to(cast) + pos[p:end]).repeat(g, 1, 1)  # (G*C, S, W)
    x = torch.cat([x_p.flatten(0, 1), x_s.flatten(0, 1)])  # (G*P + G*C*S, W): one matrix for every linear
    mask = owner.attn_mask[:end, :end].to(cast)
    blocks = owner.transformer.resblocks
    shape = (g, p, c, end - p)
    pick = (pooled - p).repeat(g)  # (G*C,) the pooled position inside each suffix
    for i, block in enumerate(blocks):
        x = _shared_prefix_block(block, x, shape, mask, pick if i == len(blocks) - 1 else None)
    x = owner.ln_final(x)  # (G*C, W): the last block kept only the pooled rows
    proj = owner.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x.view(g, c, -1)


def _shared_prefix_block(block: nn.Module, x: torch.Tensor, shape: tuple[int, int, int, int], mask: torch.Tensor,
                         pick: torch.Tensor | None) -> torch.Tensor:
    """One residual attention block on the stacked prefix rows (G*P) and suffix rows (G*C*S).

    In the last block (``pick`` given) only the pooled row of each suffix is computed and
    returned, (G*C, W): it alone is read after the tower, and its keys/values come from
    the block input.
    """
    g, p, c, s = shape
    attn: nn.MultiheadAttention = block.attn
    h, split = attn.num_heads, g * p
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # fused q/k/v
    q_p, k_p, v_p = (t[:split].view(g, p, -1) for t in (q, k, v))  # (G, P, W)
    q_s, k_s, v_s = (t[split:].view(g * c, s, -1) for t in (q, k, v))  # (G*C, S, W)
    k_s = torch.cat([k_p.repeat_interleave(c, dim=0), k_s], dim=1)  # (G*C, P+S, W): the prefix's keys first
    v_s = torch.cat([v_p.repeat_interleave(c, dim=0), v_s], dim=1)
    mask_s = mask[p:]  # (S, P+S)
    if pick is not None:
        rows = torch.arange(len(pick), device=pick.device)
        q_s, mask_s = q_s[rows, pick][:, None], mask_s[pick][:, None, None]  # (G*C, 1, W), (G*C, 1, 1, P+S)
        out = F.scaled_dot_product_attention(split_heads(q_s, h), split_heads(k_s, h), split_heads(v_s, h),
                                             attn_mask=mask_s)
        y = x[split:].view(g * c, s, -1)[rows, pick] + block.ls_1(attn.out_proj(out.transpose(1, 2).flatten(1)))
        return y + block.ls_2(block.mlp(block.ln_2(y)))  # nothing reads the prefix after the last block
    out_p = F.scaled_dot_product_attention(split_heads(q_p, h), split_heads(k_p, h), split_heads(v_p, h),
                                           attn_mask=mask[:p, :p])
    out_s = F.scaled_dot_product_attention(split_heads(q_s, h), split_heads(k_s, h), split_heads(v_s, h),
                                           attn_mask=mask_s)
    out = torch.cat([out_p.transpose(1, 2).flatten(0, 1), out_s.transpose(1, 2).flatten(0, 1)])  # (R, H, hd)
    x = x + block.ls_1(attn.out_proj(out.flatten(1)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
