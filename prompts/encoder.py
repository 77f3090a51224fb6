"""The one prompted text encoder every prompt learner builds on.

``[SOS][ctx_1..ctx_n][class tokens][.][EOS]`` token embeddings run through the frozen
text tower from the backbone's embedding hook (Zhou et al., CoOp, IJCV 2022, Sec. 3.2,
unified and class-specific context). The learned context may be shared by all classes (CoOp's unified context),
class-specific (CSC), and may carry leading group dimensions: one context per image
(CoCoOp), per domain (DAPrompt), per query (DeFo). ``encode(ctx)`` accepts any of these,
so a method owns its parameters and composes them, e.g. DAPrompt's
``torch.cat([agnostic.expand(D, -1, -1), specific], dim=1)``.
"""
from __future__ import annotations

import torch
from torch import nn

from vlkit.prompts.layout import PromptLayout, build_layout
from vlkit.prompts.shared_prefix import SharedPrefixEncoder
from vlkit.errors import ShapeError


class PromptedTextEncoder(nn.Module):
    """Learned context vectors + class names -> text features through the frozen tower.

    Args:
        backbone: a ``vlkit.Backbone`` (only its text hook and tokenizer are used).
        classnames: the C class names.
        n_ctx: number of context tokens n (None: all tokens of ``init``).
        init: a phrase ("a photo of a") whose token embeddings initialise the context;
            None draws N(0, 0.02) as CoOp.
        position: class-name position "end" | "middle" | "front".
        class_specific: one context per class (C, n, W) instead of one shared (n, W).
        generator: the random source of the initialisation.
    """

    def __init__(self, backbone, classnames: list[str], n_ctx: int | None = None, init: str | None = None,
                 position: str = "end", class_specific: bool = False,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        tower = backbone.text
        self.tower = tower
        self.class_specific = class_specific
        self.position = position
        self.layout: PromptLayout = build_layout(
            backbone.tokenize, getattr(tower, "pad_id", 0), tower.context_length, classnames, n_ctx, init, position)
        device = backbone.device
        tokens = self.layout.tokens.to(device)
        with torch.no_grad():
            base = tower.token_embedding(tokens).float()  # (C, L, W)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("base", base, persistent=False)
        self.register_buffer("ctx_index", self.layout.ctx_index.to(device), persistent=False)
        self.n_ctx, self.width = self.layout.ctx_index.shape[1], base.shape[-1]
        self.ctx = nn.Parameter(self.initial_context(generator))  # (n, W) or (C, n, W)
        self.fast = SharedPrefixEncoder.build(tower, self.layout, position == "end" and not class_specific)

    @property
    def num_classes(self) -> int:
        """C."""
        return self.tokens.shape[0]

    def initial_context(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, W) or (C, n, W): the init phrase's embeddings, else N(0, 0.02) draws."""
        if self.layout.init_ids is not None:
            first = self.base[0].gather(0, self.ctx_index[0, :, None].expand(-1, self.width))  # (n, W)
            ctx = first.clone()
            return ctx.expand(self.num_classes, -1, -1).clone() if self.class_specific else ctx
        shape = (self.num_classes, self.n_ctx, self.width) if self.class_specific else (self.n_ctx, self.width)
        return (torch.randn(shape, generator=generator) * 0.02).to(self.base.device)

    def _groups(self, ctx: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Normalise ctx to (G, C or 1, n, W); return it with the leading group shape."""
        core = 3 if self.class_specific else 2
        if ctx.ndim < core or ctx.shape[-2:] != (self.n_ctx, self.width) or \
                (self.class_specific and ctx.shape[-3] != self.num_classes):
            want = "(..., C, n, W)" if self.class_specific else "(..., n, W)"
            raise ShapeError(f"context must be {want} with n={self.n_ctx}, W={self.width}, got {tuple(ctx.shape)}")
        lead = tuple(ctx.shape[:-core])
        flat = ctx.reshape(-1, *ctx.shape[-core:])
        return (flat if self.class_specific else flat[:, None]), lead

    def embed(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the context in place: (G, C, L, W)."""
        ctx, _ = self._groups(self.ctx if ctx is None else ctx)
        g, c, l, w = ctx.shape[0], self.num_classes, self.tokens.shape[1], self.width
        index = self.ctx_index[None, :, :, None].expand(g, c, self.n_ctx, w)
        return self.base.expand(g, c, l, w).scatter(2, index, ctx.expand(g, c, -1, -1).to(self.base.dtype))

    def encode(self, ctx: torch.Tensor | None = None, fast: bool = False) -> torch.Tensor:
        """Unnormalised text features (..., C, D) of the prompts built from ``ctx``.

        ``fast`` runs the shared prefix once per group when the tower allows it: exact in
        real arithmetic, equal to the plain path up to float rounding (used in training).
        """
        ctx = self.ctx if ctx is None else ctx
        groups, lead = self._groups(ctx)
        if fast and self.fast is not None:
            feats = self.fast(groups[:, 0].to(self.base.dtype), self.base, self.tokens)  # (G, C, D)
        else:
            embeds = self.embed(ctx)  # (G, C, L, W)
            g, c = embeds.shape[:2]
            tokens = self.tokens.repeat(g, 1)  # (G*C, L)
            feats = self.tower.encode_embeddings(embeds.flatten(0, 1), tokens).view(g, c, -1)
        return feats.reshape(*lead, self.num_classes, -1)

    def forward(self, ctx: torch.Tensor | None = None, fast: bool = False) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(ctx, fast)
