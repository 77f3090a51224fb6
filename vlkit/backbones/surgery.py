"""Model surgery for the towers of open_clip models (and vlkit-mini's MiniLM text tower).

The one place outside open_clip that knows how a tower is built; encoder-level methods
(prompt learners, tuners) go through it, so an open_clip upgrade breaks this file (and
:mod:`vlkit.backbones.attention_views`) only. It offers:

- **blocks**: :func:`tower_blocks`, :func:`tower_depth`, :func:`tower_width` find the
  transformer layers of the image or text tower (open_clip ViT, open_clip's causal text
  transformer, a Hugging Face BERT text encoder);
- **copies and wrapping**: :func:`shared_copy` (modules copied, weights shared),
  :func:`split_tower_attention` (q/k/v/out views of every attention, see
  :class:`~vlkit.backbones.attention_views.SplitAttention`), :func:`wrap_roles` (swap a
  projection for a wrapper: LoRA, IA3, adapters), :func:`train_clones` (BitFit),
  :func:`attach` (a tuner's own tensors beside the blocks), :func:`add_block_branch` (a
  residual branch beside a block: TinyTL);
- **intermediate tokens**: :func:`block_outputs` records every block's output tokens during a
  forward pass (the per-layer features of the store, LST's ladders, Head2Toe);
- **prompt tokens**: :func:`prompt_tokens` inserts learned tokens after the embeddings
  (shallow) and writes new ones over them at the input of deeper layers (deep); VPT and
  MaPLe both use it. The tokens live only while the ``with`` block is active.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, Union

import torch
from torch import nn

from vlkit.backbones.attention_views import SplitAttention, split_attention
from vlkit.errors import VlkitError

TOWERS = ("image", "text")
ROLES = ("q", "k", "v", "out", "fc1", "fc2")
TokenSource = Union[Sequence[Union[torch.Tensor, None]], Callable[[int], Union[torch.Tensor, None]]]


# ---- finding a tower's blocks ----------------------------------------------------------------
def get_module(root: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path`` ("" is ``root``)."""
    return root.get_submodule(path)


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` by ``module``."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def tower_root(model: nn.Module, tower: str) -> str:
    """Dotted path of the module holding ``tower`` ("" for CLIP's built-in text tower)."""
    if tower == "image":
        if not hasattr(getattr(model, "visual", None), "transformer"):
            kind = type(getattr(model, "visual", None)).__name__
            raise VlkitError(f"this method needs a ViT image tower, but {kind} has no transformer blocks "
                             "(tuners can use tower='text')")
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


def _blocks_path(model: nn.Module, tower: str) -> tuple[str, str]:
    """(dotted path of the block list, block kind "open_clip" | "bert")."""
    root = tower_root(model, tower)
    owner = get_module(model, root)
    if hasattr(getattr(owner, "transformer", None), "resblocks"):
        return _join(root, "transformer.resblocks"), "open_clip"
    encoder = getattr(getattr(owner, "transformer", None), "encoder", None)
    if encoder is not None and hasattr(encoder, "layer"):
        return _join(root, "transformer.encoder.layer"), "bert"
    raise NotImplementedError(f"no transformer blocks found in the {tower} tower of {type(model).__name__}")


def tower_blocks(model: nn.Module, tower: str) -> nn.ModuleList:
    """The transformer blocks of ``tower``, first to last."""
    return get_module(model, _blocks_path(model, tower)[0])


def tower_depth(model: nn.Module, tower: str) -> int:
    """Number of transformer blocks of ``tower``."""
    return len(tower_blocks(model, tower))


def tower_width(model: nn.Module, tower: str) -> int:
    """W, the width of the tokens between ``tower``'s blocks."""
    path, kind = _blocks_path(model, tower)
    if kind == "bert":
        return int(get_module(model, tower_root(model, tower)).transformer.config.hidden_size)
    return int(get_module(model, path.rpartition(".")[0]).width)


def _batch_first(model: nn.Module, tower: str) -> bool:
    path, kind = _blocks_path(model, tower)
    return kind == "bert" or bool(getattr(get_module(model, path.rpartition(".")[0]), "batch_first", True))


def patch_size(model: nn.Module) -> int:
    """The image tower's patch size p (patches are p x p pixels)."""
    size = get_module(model, tower_root(model, "image")).patch_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


# ---- copies, attention views, wrapped roles ------------------------------------------------------
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


def split_tower_attention(model: nn.Module, tower: str) -> list[Block]:
    """Swap every attention of ``tower`` for its :class:`SplitAttention` view (once); return the
    blocks with the paths of their roles ``q``, ``k``, ``v``, ``out``, ``fc1``, ``fc2``.

    Edits ``model`` in place: call it on a :func:`shared_copy`, never on a backbone's model.
    """
    path, kind = _blocks_path(model, tower)
    out = []
    for i, block in enumerate(get_module(model, path)):
        at = _join(path, str(i))
        if kind == "open_clip":
            block.attn = split_attention(block.attn)
            a = _join(at, "attn")
            out.append(Block(i, at, a, f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj", f"{a}.out_proj",
                             _join(at, "mlp.c_fc"), _join(at, "mlp.c_proj")))
        else:
            block.attention.self = split_attention(block.attention.self)
            a = _join(at, "attention.self")
            out.append(Block(i, at, a, f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj",
                             _join(at, "attention.output.dense"), _join(at, "intermediate.dense"),
                             _join(at, "output.dense")))
    return out


def attention_of(model: nn.Module, block: Block) -> SplitAttention:
    """The :class:`SplitAttention` of a block returned by :func:`split_tower_attention`."""
    return get_module(model, block.attention)


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
    trainable *copies* (the shared frozen tensor is untouched); returns their names."""
    names = []
    for mod_name, mod in module.named_modules():
        for p_name, param in list(mod.named_parameters(recurse=False)):
            if keep(mod, p_name) and not param.requires_grad:
                setattr(mod, p_name, nn.Parameter(param.detach().clone(), requires_grad=True))
                names.append(_join(mod_name, p_name))
    return names


def attach(model: nn.Module, tower: str, name: str, value: nn.Parameter | nn.Module) -> str:
    """Register a method's own parameter or module under ``name`` on the module holding
    ``tower``'s blocks (of a :func:`shared_copy`); returns its dotted path."""
    container = _blocks_path(model, tower)[0].rpartition(".")[0]
    module = get_module(model, container)
    if hasattr(module, name):
        raise VlkitError(f"{_join(container, name)} already exists: attach {name!r} once, under a new name")
    if isinstance(value, nn.Parameter):
        module.register_parameter(name, value)
    else:
        module.add_module(name, value)
    return _join(container, name)


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """name -> parameter for every parameter of ``model`` that requires grad."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def add_block_branch(model: nn.Module, tower: str, block: Block, name: str, branch: nn.Module) -> None:
    """Make ``block`` of ``tower`` return ``block(x) + branch(x)``: ``branch`` maps the block's input
    tokens (N, L, W) batch-first to (N, L, W) and is registered on the block as ``name`` (of a
    :func:`shared_copy`: the hook stays on the copy)."""
    module = get_module(model, block.path)
    if hasattr(module, name):
        raise VlkitError(f"{_join(block.path, name)} already exists: add the branch {name!r} once")
    module.add_module(name, branch)
    batch_first = _batch_first(model, tower)

    def add(mod, args, kwargs, output):
        x, _ = _hidden(args, kwargs)
        extra = mod.get_submodule(name)(x if batch_first else x.transpose(0, 1))
        extra = extra if batch_first else extra.transpose(0, 1)
        if isinstance(output, tuple):
            return (output[0] + extra.to(output[0].dtype), *output[1:])
        return output + extra.to(output.dtype)

    module.register_forward_hook(add, with_kwargs=True)


# ---- intermediate tokens -------------------------------------------------------------------------
@contextlib.contextmanager
def block_outputs(model: nn.Module, tower: str = "image") -> Iterator[list[torch.Tensor]]:
    """While active, every forward pass of ``tower`` appends each block's output tokens,
    (N, L, W) batch-first, first block first, to the yielded list (nothing is changed)."""
    batch_first = _batch_first(model, tower)
    outputs: list[torch.Tensor] = []

    def keep(module, args, output):
        x = output[0] if isinstance(output, tuple) else output
        outputs.append(x if batch_first else x.transpose(0, 1))

    handles = [block.register_forward_hook(keep) for block in tower_blocks(model, tower)]
    with _removed_on_exit(handles):
        yield outputs


# ---- prompt tokens -------------------------------------------------------------------------------
def _span(length: int, start: int, n: int) -> int:
    """The first position of n prompt tokens at ``start`` (negative: from the end) in ``length``."""
    begin = start if start >= 0 else length + start
    if not 0 <= begin <= length - n:
        raise VlkitError(f"prompt tokens at position {start} (n={n}) do not fit a sequence of {length}")
    return begin


def insert_tokens(x: torch.Tensor, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """(N, L, W) + (n, W) -> (N, L + n, W) with the tokens at [s, s + n) of the result
    (s = ``start``, or L + n + ``start`` when negative: -n appends)."""
    n = tokens.shape[0]
    begin = _span(x.shape[1] + n, start, n)
    rows = tokens.to(x.dtype)[None].expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :begin], rows, x[:, begin:]], dim=1)


def replace_tokens(x: torch.Tensor, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """(N, L, W): write (n, W) ``tokens`` over positions [s, s + n) of every sequence."""
    n = tokens.shape[0]
    begin = _span(x.shape[1], start, n)
    rows = tokens.to(x.dtype)[None].expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :begin], rows, x[:, begin + n:]], dim=1)


def remove_tokens(x: torch.Tensor, start: int, n: int) -> torch.Tensor:
    """(N, L, W) -> (N, L - n, W) without positions [s, s + n)."""
    begin = _span(x.shape[1], start, n)
    return torch.cat([x[:, :begin], x[:, begin + n:]], dim=1)


def _seq_first(fn: Callable[..., torch.Tensor], batch_first: bool) -> Callable[..., torch.Tensor]:
    """``fn`` on (N, L, W) applied to a tensor in the tower's own layout."""
    if batch_first:
        return fn
    return lambda x, *args: fn(x.transpose(0, 1), *args).transpose(0, 1)


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


@contextlib.contextmanager
def _removed_on_exit(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def prompt_tokens(model: nn.Module, tower: str, prompts: TokenSource, start: int,
                  insert: bool = False, normalize: bool = False) -> contextlib.AbstractContextManager:
    """While active, ``tower`` of ``model`` runs with prompt tokens (the weights are untouched).

    ``prompts`` gives the (n, W) tokens of each layer, as a sequence indexed by layer or a
    function ``layer -> tokens | None`` called while the tower runs (None: that layer's
    input is left alone). ``start`` is the prompts' position; negative counts from the end.

    - shallow (``insert``): layer 0's tokens are inserted after the embeddings, at the
      input of the first block (``normalize``: at the input of the ViT's embedding norm
      ``ln_pre``, so they are normalised like the patch tokens, as MaPLe). The sequence
      grows by n; the tokens are removed again from the last block's output, so pooling
      reads the tower's own tokens.
    - deep: every layer i >= 1 with tokens gets them written over the n prompt positions
      at its input (VPT-deep, MaPLe). Without ``insert`` those positions are the caller's
      own (the learned context of a text prompt) and layer 0 must have no tokens.
    """
    blocks = tower_blocks(model, tower)
    batch_first = _batch_first(model, tower)
    if callable(prompts):
        source, layers = prompts, range(len(blocks))
    else:
        if len(prompts) > len(blocks):
            raise VlkitError(f"{len(prompts)} layers of prompt tokens do not fit the {tower} tower's "
                             f"{len(blocks)} blocks")
        source, layers = (lambda i: prompts[i]), [i for i, p in enumerate(prompts) if p is not None]
    if insert and tower != "image":
        raise VlkitError("prompt tokens can only be inserted into the image tower; text prompts replace "
                         "the context tokens of the input")
    if not callable(prompts) and insert != (0 in layers):
        raise VlkitError("layer 0's prompt tokens are inserted (insert=True) or built into the input by the "
                         "caller (insert=False, prompts[0] None)")
    inserted: list[int] = []  # n of the tokens inserted in this forward (for their removal)
    handles = []
    insert_at, replace_at, remove_at = (_seq_first(f, batch_first) for f in (insert_tokens, replace_tokens,
                                                                               remove_tokens))
    if insert:
        def add(module, args, kwargs):
            tokens = source(0)
            inserted[:] = [tokens.shape[0]]
            x, key = _hidden(args, kwargs)
            return _with_hidden(args, kwargs, key, insert_at(x, tokens, start))

        site = get_module(model, _join(tower_root(model, "image"), "ln_pre")) if normalize else blocks[0]
        handles.append(site.register_forward_pre_hook(add, with_kwargs=True))

        def drop(module, args, output):
            return remove_at(output, start, inserted[0])

        handles.append(blocks[len(blocks) - 1].register_forward_hook(drop))
    for layer in layers:
        if layer == 0:
            continue

        def overwrite(module, args, kwargs, layer=layer):
            tokens = source(layer)
            if tokens is None:
                return None
            x, key = _hidden(args, kwargs)
            return _with_hidden(args, kwargs, key, replace_at(x, tokens, start))

        handles.append(blocks[layer].register_forward_pre_hook(overwrite, with_kwargs=True))
    return _removed_on_exit(handles)
