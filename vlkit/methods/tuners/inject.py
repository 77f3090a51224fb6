"""The one injection mechanism every tuner uses.

1. :func:`shared_copy` copies the open_clip model's *modules* while sharing every frozen
   tensor with the backbone (a deep copy whose memo maps each parameter and buffer to
   itself). Tuners edit the copy's module tree, never the backbone: its weights stay
   bitwise unchanged, and the copy costs no weight memory.
2. :func:`prepare_tower` replaces each attention of a tower by a
   :class:`~vlkit.methods.tuners.attention.TunableAttention` and returns the tower's
   :class:`Block` list: for every layer the dotted paths of its roles ``q``, ``k``,
   ``v``, ``out`` (attention projections), ``fc1``, ``fc2`` (feed-forward) and
   ``attention``, the same names on open_clip's ViT, its text transformer and a
   Hugging Face BERT text encoder.
3. A tuner calls :func:`wrap_roles` (swap a role for a wrapper around it),
   sets an attribute on the attention (prefix), or :func:`train_clones` (BitFit).

Trainable tensors are exactly the copy's parameters with ``requires_grad``; nothing
shared with the backbone ever requires grad, and a tuner replaces (never edits in
place) any frozen tensor it trains.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable

from torch import nn

from vlkit.errors import VlkitError
from vlkit.methods.tuners import attention as att

TOWERS = ("image", "text")
ROLES = ("q", "k", "v", "out", "fc1", "fc2")


@dataclass
class Block:
    """One transformer layer: dotted paths (from the model root) of its roles."""

    index: int
    path: str
    attention: str
    q: str
    k: str
    v: str
    out: str
    fc1: str
    fc2: str

    def role(self, name: str) -> str:
        """Path of role ``name`` (one of :data:`ROLES` or ``"attention"``)."""
        return getattr(self, name)


def shared_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``'s modules that shares every parameter and buffer with it."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def get_module(root: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path``."""
    return root.get_submodule(path)


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` by ``module``."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def tower_root(model: nn.Module, tower: str) -> str:
    """Dotted path of the module holding ``tower``'s blocks ("" for CLIP's built-in text tower)."""
    if tower == "image":
        if not hasattr(getattr(model, "visual", None), "transformer"):
            kind = type(getattr(model, "visual", None)).__name__
            raise VlkitError(f"image-tower tuners need a ViT image tower; {kind} has no transformer blocks "
                             "(use tower='text')")
        return "visual"
    if tower != "text":
        raise VlkitError(f"tower must be one of {TOWERS}, got {tower!r}")
    if hasattr(model, "transformer") and hasattr(model, "token_embedding"):
        return ""  # open_clip CLIP: the text tower's modules sit on the model itself
    if hasattr(model, "text"):
        return "text"
    raise VlkitError(f"no text tower found on {type(model).__name__}")


def tower_modules(model: nn.Module, tower: str) -> list[tuple[str, nn.Module]]:
    """The (path, module) pairs that make up ``tower`` (for BitFit and freezing checks)."""
    root = tower_root(model, tower)
    if root:
        return [(root, get_module(model, root))]
    return [(name, module) for name, module in model.named_children() if name in ("transformer", "ln_final")]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def prepare_tower(model: nn.Module, tower: str) -> list[Block]:
    """Swap every attention of ``tower`` for a TunableAttention (once); return its blocks."""
    root = tower_root(model, tower)
    owner = get_module(model, root) if root else model
    if hasattr(owner, "transformer") and hasattr(owner.transformer, "resblocks"):
        return [_prepare_open_clip(model, _join(root, "transformer.resblocks", str(i)), i)
                for i in range(len(owner.transformer.resblocks))]
    encoder = getattr(getattr(owner, "transformer", None), "encoder", None)
    if encoder is not None and hasattr(encoder, "layer"):
        return [_prepare_bert(model, _join(root, "transformer.encoder.layer", str(i)), i)
                for i in range(len(encoder.layer))]
    raise NotImplementedError(f"no transformer blocks found in the {tower} tower of {type(model).__name__}")


def _prepare_open_clip(model: nn.Module, path: str, index: int) -> Block:
    block = get_module(model, path)
    attn = block.attn
    if isinstance(attn, nn.MultiheadAttention):
        block.attn = att.from_multihead(attn)
    elif not isinstance(attn, att.TunableAttention):
        block.attn = att.from_open_clip_attention(attn)
    a = _join(path, "attn")
    return Block(index, path, a, f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj", f"{a}.out_proj",
                 _join(path, "mlp.c_fc"), _join(path, "mlp.c_proj"))


def _prepare_bert(model: nn.Module, path: str, index: int) -> Block:
    layer = get_module(model, path)
    if not isinstance(layer.attention.self, att.TunableAttention):
        layer.attention.self = att.from_bert_self_attention(layer.attention.self)
    a = _join(path, "attention.self")
    return Block(index, path, a, f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj", _join(path, "attention.output.dense"),
                 _join(path, "intermediate.dense"), _join(path, "output.dense"))


def select_blocks(blocks: list[Block], layers: Iterable[int] | None) -> list[Block]:
    """The blocks whose index is in ``layers`` (negative counts from the end; None = all)."""
    if layers is None:
        return blocks
    wanted = {i % len(blocks) if -len(blocks) <= i < len(blocks) else None for i in layers}
    if None in wanted:
        raise VlkitError(f"layers {list(layers)} out of range for a tower with {len(blocks)} blocks")
    return [b for b in blocks if b.index in wanted]


def wrap_roles(model: nn.Module, blocks: list[Block], roles: Iterable[str],
               factory: Callable[[nn.Module, str], nn.Module]) -> None:
    """Replace role module ``m`` of every block by ``factory(m, role)``."""
    for block in blocks:
        for role in roles:
            if role not in ROLES:
                raise VlkitError(f"unknown role {role!r}; roles are {ROLES}")
            path = block.role(role)
            set_module(model, path, factory(get_module(model, path), role))


def train_clones(module: nn.Module, keep: Callable[[nn.Module, str], bool]) -> list[str]:
    """Make the parameters ``p_name`` of submodules ``mod`` with ``keep(mod, p_name)``
    trainable *copies* (the shared frozen tensor is untouched)."""
    names = []
    for mod_name, mod in module.named_modules():
        for p_name, param in list(mod.named_parameters(recurse=False)):
            full = _join(mod_name, p_name)
            if keep(mod, p_name) and not param.requires_grad:
                setattr(mod, p_name, nn.Parameter(param.detach().clone(), requires_grad=True))
                names.append(full)
    return names


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """name -> parameter for every parameter of ``model`` that requires grad."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
