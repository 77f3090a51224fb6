"""Exact savings in a causal text tower: run the prompt prefix shared by all classes once.

With a shared context at the front ("[SOS][ctx][class][.][EOS]"), positions 0..P-1 hold
the same embeddings in every class's prompt. The CLIP text transformer is causal, so
their hidden states at every layer are the same for all classes too: they are computed
once per context group, and each class only runs its own suffix (class tokens, ".",
EOS), attending to the prefix's keys and values. Together with trimming after the last
EOS (the backbone hook), this is exact in real arithmetic; floats differ by rounding.

The attention is recomputed from the frozen ``nn.MultiheadAttention`` weights (no
weight is copied or changed); towers whose blocks are not open_clip's plain
``ResidualAttentionBlock`` fall back to the plain path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.backbones.text_tower import CausalTextTower


def _plain_block(block: nn.Module) -> bool:
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(block, "attn", None)
    return (type(block) is ResidualAttentionBlock and isinstance(attn, nn.MultiheadAttention)
            and attn.batch_first and attn._qkv_same_embed_dim and not hasattr(block, "ln_1_kv"))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, T, W) -> (N, H, T, W / H)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class SharedPrefixEncoder:
    """Encode (G, n, W) shared contexts for C classes as (G, C, D) features."""

    def __init__(self, tower: CausalTextTower, prefix: int, ctx_index: torch.Tensor) -> None:
        self.tower, self.prefix = tower, prefix
        self.ctx_index = ctx_index  # (n,) positions of the context inside the prefix

    @classmethod
    def build(cls, tower, layout, shared_front: bool) -> "SharedPrefixEncoder | None":
        """The fast path for this tower and layout, or None where it does not apply."""
        owner = getattr(tower, "owner", None)
        if not shared_front or not isinstance(tower, CausalTextTower) or tower.pool_type == "last":
            return None
        if owner.attn_mask is None or not owner.transformer.batch_first:
            return None
        if not all(_plain_block(b) for b in owner.transformer.resblocks):
            return None
        index = layout.ctx_index[0]
        if not (layout.ctx_index == index).all() or int(index.max()) >= layout.shared_prefix:
            return None
        return cls(tower, layout.shared_prefix, index)

    def __call__(self, ctx: torch.Tensor, base: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """ctx (G, n, W), base (C, L, W) frozen embeddings, tokens (C, L) -> (G, C, D)."""
        owner, p = self.tower.owner, self.prefix
        g, c = ctx.shape[0], base.shape[0]
        pooled = self.tower.pooled_index(tokens)  # (C,)
        end = int(pooled.max()) + 1
        cast = owner.transformer.get_cast_dtype()
        pos = owner.positional_embedding.to(cast)
        index = self.ctx_index.to(base.device)[None, :, None].expand(g, -1, base.shape[-1])
        head = base[:1, :p].expand(g, -1, -1).scatter(1, index, ctx)  # (G, P, W)
        x_p = head.to(cast) + pos[:p]  # (G, P, W)
        x_s = (base[:, p:end].to(cast) + pos[p:end]).repeat(g, 1, 1)  # (G*C, S, W)
        x = torch.cat([x_p.flatten(0, 1), x_s.flatten(0, 1)])  # (G*P + G*C*S, W): one matrix for every linear
        mask = owner.attn_mask[:end, :end].to(cast)
        blocks = owner.transformer.resblocks
        shape = (g, p, c, end - p)
        pick = (pooled - p).repeat(g)  # (G*C,) the pooled position inside each suffix
        for i, block in enumerate(blocks):
            x = self._block(block, x, shape, mask, pick if i == len(blocks) - 1 else None)
        x = owner.ln_final(x)  # (G*C, W): the last block kept only the pooled rows
        proj = owner.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x.view(g, c, -1)

    @staticmethod
    def _block(block: nn.Module, x: torch.Tensor, shape: tuple[int, int, int, int], mask: torch.Tensor,
               pick: torch.Tensor | None) -> torch.Tensor:
        """One residual attention block on the stacked prefix rows (G*P) and suffix rows (G*C*S).

        In the last block (``pick`` given) only the pooled row of each suffix is computed
        and returned, (G*C, W): it alone is read after the tower, and its keys/values
        come from the block input.
        """
        g, p, c, s = shape
        attn: nn.MultiheadAttention = block.attn
        h, split = attn.num_heads, g * p
        q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q_p, k_p, v_p = (t[:split].view(g, p, -1) for t in (q, k, v))  # (G, P, W)
        q_s, k_s, v_s = (t[split:].view(g * c, s, -1) for t in (q, k, v))  # (G*C, S, W)
        k_s = torch.cat([k_p.repeat_interleave(c, dim=0), k_s], dim=1)  # (G*C, P+S, W)
        v_s = torch.cat([v_p.repeat_interleave(c, dim=0), v_s], dim=1)
        mask_s = mask[p:]  # (S, P+S)
        if pick is not None:
            rows = torch.arange(len(pick), device=pick.device)
            q_s, mask_s = q_s[rows, pick][:, None], mask_s[pick][:, None, None]  # (G*C, 1, W), (G*C, 1, 1, P+S)
            out = F.scaled_dot_product_attention(_heads(q_s, h), _heads(k_s, h), _heads(v_s, h), attn_mask=mask_s)
            y = x[split:].view(g * c, s, -1)[rows, pick] + block.ls_1(attn.out_proj(out.transpose(1, 2).flatten(1)))
            return y + block.ls_2(block.mlp(block.ln_2(y)))  # nothing reads the prefix after the last block
        out_p = F.scaled_dot_product_attention(_heads(q_p, h), _heads(k_p, h), _heads(v_p, h), attn_mask=mask[:p, :p])
        out_s = F.scaled_dot_product_attention(_heads(q_s, h), _heads(k_s, h), _heads(v_s, h), attn_mask=mask_s)
        out = torch.cat([out_p.transpose(1, 2).flatten(0, 1), out_s.transpose(1, 2).flatten(0, 1)])  # (R, H, hd)
        x = x + block.ls_1(attn.out_proj(out.flatten(1)))
        return x + block.ls_2(block.mlp(block.ln_2(x)))
