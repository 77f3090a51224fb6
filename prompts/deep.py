"""Deep prompts inside frozen transformer blocks, inserted by forward hooks.

MaPLe (and deep VPT) put learned tokens into the input of several transformer
layers. The frozen towers are not modified: for the duration of a ``with`` block,
forward pre-hooks replace (text) or append (vision) tokens at a layer's input, and
every hook is removed on exit, even after an error.

Text: layer i >= 1 gets its prompt written over positions ``positions`` (the context
slots; layer 0's context is the input embedding itself). Vision: the layer-0 prompt
is appended after the patch tokens at ``ln_pre``'s input (after positional
embeddings, as MaPLe), layers i >= 1 overwrite those last n tokens, and the last
block's output drops them again so pooling sees the original tokens.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from vlkit.backbones.text_tower import CausalTextTower, HFTextTower, TextTower
from vlkit.errors import VlkitError


def text_blocks(tower: TextTower) -> tuple[nn.ModuleList, bool]:
    """The text tower's transformer blocks and whether they take (N, L, W) (batch first)."""
    if isinstance(tower, CausalTextTower):
        transformer = tower.owner.transformer
        return transformer.resblocks, bool(getattr(transformer, "batch_first", True))
    if isinstance(tower, HFTextTower):
        encoder = getattr(tower.encoder.transformer, "encoder", None)
        layers = getattr(encoder, "layer", None) or getattr(encoder, "layers", None)
        if layers is not None:
            return layers, True
    raise VlkitError(f"deep text prompts are not supported for {type(tower).__name__}")


def vision_blocks(visual: nn.Module) -> tuple[nn.Module, nn.ModuleList, bool]:
    """(ln_pre, blocks, batch_first) of an open_clip VisionTransformer."""
    transformer = getattr(visual, "transformer", None)
    if transformer is None or not hasattr(transformer, "resblocks") or not hasattr(visual, "ln_pre"):
        raise VlkitError(f"deep vision prompts need an open_clip VisionTransformer, got {type(visual).__name__}")
    return visual.ln_pre, transformer.resblocks, bool(getattr(transformer, "batch_first", True))


def _hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, str | None]:
    """The hidden states a block was called with, and the keyword that carried them."""
    if args:
        return args[0], None
    for key in ("hidden_states", "q_x", "x"):
        if key in kwargs:
            return kwargs[key], key
    raise VlkitError("cannot find the hidden states in a transformer block's arguments")


def _with_hidden(args: tuple, kwargs: dict, key: str | None, x: torch.Tensor) -> tuple[tuple, dict]:
    if key is None:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, key: x}


def _overwrite(x: torch.Tensor, prompt: torch.Tensor, start: int, batch_first: bool) -> torch.Tensor:
    """Write (n, W) ``prompt`` over positions [start, start + n) of every sequence in x."""
    if not batch_first:
        x = x.transpose(0, 1)
    n = prompt.shape[0]
    begin = start if start >= 0 else x.shape[1] + start
    tokens = prompt.to(x.dtype)[None].expand(x.shape[0], -1, -1)
    out = torch.cat([x[:, :begin], tokens, x[:, begin + n:]], dim=1)
    return out if batch_first else out.transpose(0, 1)


@contextlib.contextmanager
def hooks(handles: list) -> Iterator[None]:
    """Remove every hook handle on exit."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def text_deep_prompts(tower: TextTower, prompts: Sequence[torch.Tensor],
                      start: int) -> contextlib.AbstractContextManager:
    """While active, text layer i (1..len(prompts)) gets ``prompts[i-1]`` (n, W) at [start, start+n)."""
    blocks, batch_first = text_blocks(tower)
    if len(prompts) >= len(blocks):
        raise VlkitError(f"{len(prompts)} deep text prompts need more than {len(blocks)} text layers")
    handles = []
    for layer, prompt in enumerate(prompts, start=1):
        def replace(module, args, kwargs, prompt=prompt):
            x, key = _hidden(args, kwargs)
            return _with_hidden(args, kwargs, key, _overwrite(x, prompt, start, batch_first))

        handles.append(blocks[layer].register_forward_pre_hook(replace, with_kwargs=True))
    return hooks(handles)


def vision_deep_prompts(visual: nn.Module, prompts: Sequence[torch.Tensor]) -> contextlib.AbstractContextManager:
    """While active, the image tower carries n extra tokens: ``prompts[0]`` appended at the
    input, ``prompts[i]`` written over them at layer i, and dropped after the last layer."""
    ln_pre, blocks, batch_first = vision_blocks(visual)
    if not prompts or len(prompts) > len(blocks):
        raise VlkitError(f"need 1..{len(blocks)} vision prompts, got {len(prompts)}")
    n = prompts[0].shape[0]
    seq = 1 if batch_first else 0

    def append(module, args):
        x = args[0]
        tokens = prompts[0].to(x.dtype)
        tokens = tokens[None].expand(x.shape[0], -1, -1) if batch_first else tokens[:, None].expand(-1, x.shape[1], -1)
        return (torch.cat([x, tokens], dim=seq), *args[1:])

    def drop(module, args, output):
        return output.narrow(seq, 0, output.shape[seq] - n)

    handles = [ln_pre.register_forward_pre_hook(append)]
    for layer, prompt in enumerate(prompts[1:], start=1):
        def replace(module, args, kwargs, prompt=prompt):
            x, key = _hidden(args, kwargs)
            return _with_hidden(args, kwargs, key, _overwrite(x, prompt, -n, batch_first))

        handles.append(blocks[layer].register_forward_pre_hook(replace, with_kwargs=True))
    handles.append(blocks[len(blocks) - 1].register_forward_hook(drop))
    return hooks(handles)
