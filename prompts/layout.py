"""Token layout of learned prompts: where the context vectors go in each class's sequence.

A prompt is tokenized as ordinary text with placeholder words ("X X X ... {classname}.")
and the embeddings at the placeholder positions are replaced by learned vectors
(Zhou et al., CoOp, IJCV 2022, Sec. 3.2). Building prompts from text works for
every tokenizer (CLIP's BPE with [SOS]/[EOS], BERT's WordPiece with [CLS]/[SEP]), and
the positions are checked against the tokens, so a tokenizer that splits differently
fails loudly instead of silently misplacing the context.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vlkit.errors import VlkitError

PLACEHOLDER = "X"
SUFFIX = "."
POSITIONS = ("end", "middle", "front")


@dataclass
class PromptLayout:
    """Token ids of C prompts and the positions of their n context slots."""

    texts: list[str]  # the C prompt strings that were tokenized
    tokens: torch.Tensor  # (C, L) token ids
    ctx_index: torch.Tensor  # (C, n) positions of the context slots, ascending
    init_ids: torch.Tensor | None  # (n,) token ids of the init phrase at the slots, or None
    shared_prefix: int  # positions [0, P) hold the same token ids in every row


def content_length(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """(M, L) token ids -> (M,) index of the last non-pad token + 1."""
    steps = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
    return ((tokens != pad_id) * steps).max(dim=1).values


def clean_name(name: str) -> str:
    """Class names as CoOp writes them in prompts ("_" becomes a space)."""
    return name.replace("_", " ").strip()


def largest_context(tokenize, pad_id: int, context_length: int, texts: list[str], most: int) -> int:
    """The most context slots ``n <= most`` whose prompts "X ... X {text}." fit every text (0: none fit).

    A prompt fits when its tokens, start and end tokens included, stay below
    ``context_length`` (the rule :func:`build_layout` checks).
    """
    names = [clean_name(t) for t in texts]
    for n in range(most, 0, -1):
        prompts = [" ".join([PLACEHOLDER] * n + [name]) + SUFFIX for name in names]
        if bool((content_length(tokenize(prompts).cpu(), pad_id) < context_length).all()):
            return n
    return 0


def _common_prefix(tokens: torch.Tensor, lengths: torch.Tensor) -> int:
    """Length of the token prefix shared by every row (at most the shortest row - 1)."""
    same = (tokens == tokens[:1]).all(dim=0)  # (L,)
    limit = int(lengths.min()) - 1  # keep each row's end token out of the shared prefix
    differs = (~same[:limit]).nonzero()
    return int(differs[0]) if len(differs) else limit


def build_layout(tokenize, pad_id: int, context_length: int, classnames: list[str], n_ctx: int | None,
                 init: str | None = None, position: str = "end") -> PromptLayout:
    """Tokenize one prompt per class with ``n_ctx`` context slots.

    ``init``: a phrase whose first ``n_ctx`` tokens (all of them when ``n_ctx`` is None)
    initialise the slots; the prompt is then "{init} {classname}." (the rest of the
    phrase stays fixed text, as MaPLe).
    Without it the slots are placeholder words. ``position``: where the class name goes
    relative to the context (CoOp Sec. 3.2: end, middle or front).
    """
    if position not in POSITIONS:
        raise VlkitError(f"class-token position must be one of {POSITIONS}, got {position!r}")
    if n_ctx is None and not init:
        raise VlkitError("give the number of context tokens or an init phrase")
    if n_ctx is not None and n_ctx < 1:
        raise VlkitError(f"the number of context tokens must be >= 1, got {n_ctx}")
    names = [clean_name(c) for c in classnames]
    init_ids = None
    if init:
        if position != "end":
            raise VlkitError(f"an init phrase places the class name at the end; got position={position!r}")
        phrase = tokenize([init])[0]
        available = int(content_length(phrase[None], pad_id)[0]) - 2
        n_ctx = available if n_ctx is None else n_ctx
        if n_ctx > available:
            raise VlkitError(f"init phrase {init!r} has {available} tokens; cannot initialise {n_ctx} context tokens")
        init_ids = phrase[1:1 + n_ctx].cpu()
        texts = [f"{init} {c}{SUFFIX}" for c in names]
    else:
        ctx_words = [PLACEHOLDER] * n_ctx
        half = n_ctx // 2
        texts = {
            "end": [" ".join(ctx_words + [c]) + SUFFIX for c in names],
            "front": [" ".join([c] + ctx_words) + SUFFIX for c in names],
            "middle": [" ".join(ctx_words[:half] + [c] + ctx_words[half:]) + SUFFIX for c in names],
        }[position]
    tokens = tokenize(texts).cpu()  # (C, L)
    lengths = content_length(tokens, pad_id)  # (C,)
    too_long = (lengths >= context_length).nonzero()
    if len(too_long):
        i = int(too_long[0])
        raise VlkitError(f"prompt {texts[i]!r} does not fit the text tower's {context_length} tokens: "
                         f"use fewer context tokens or a shorter class name")
    n_suffix = int(content_length(tokenize([PLACEHOLDER + SUFFIX]), pad_id)[0]) - 3
    rows = []
    for length in lengths.tolist():
        end_block = list(range(length - 1 - n_suffix - n_ctx, length - 1 - n_suffix))  # the slots before "."
        if position == "end":
            rows.append(list(range(1, 1 + n_ctx)))
        elif position == "front":
            rows.append(end_block)
        else:
            half = n_ctx // 2
            rows.append(list(range(1, 1 + half)) + end_block[half:])
    ctx_index = torch.tensor(rows, dtype=torch.long)  # (C, n)
    expected = init_ids[None].expand_as(ctx_index) if init_ids is not None else \
        torch.full_like(ctx_index, int(tokenize([PLACEHOLDER])[0, 1]))
    found = tokens.gather(1, ctx_index)
    bad = (found != expected).any(dim=1).nonzero()
    if len(bad):
        i = int(bad[0])
        raise VlkitError(f"cannot locate the context slots in prompt {texts[i]!r} (class {classnames[i]!r}): "
                         f"the tokenizer split it unexpectedly; try position='end'")
    return PromptLayout(texts, tokens, ctx_index, init_ids, _common_prefix(tokens, lengths))
