"""LST: Ladder Side-Tuning (Sung et al., NeurIPS 2022).

Sec. 3: a side network of width W / r (r = 8 in the paper) reads every backbone layer
through a ladder: a linear down-projection of the layer's output, mixed with the side
network's previous state by a learned gate ``mu_i = sigmoid(alpha_i / T)`` (T = 0.1,
alpha_i = 0 at start), ``input_i = mu_i down_i(h_i) + (1 - mu_i) s_{i-1}``, then one side
block ``s_i = block_i(input_i)``. No gradient flows through the backbone, which is where
its training memory goes.

Transcription to CLIP classification (see docs/fidelity.md): the backbone layers are the
image tower's blocks, read as their pooled output (class token and patch-token mean:
the store's per-layer features), so the side blocks are small pre-norm transformer
layers over those 2 tokens. The side output (class-token row) is added to the frozen
final feature through a zero-initialised up-projection (the output gate, closed at
start), ``f = normalize(f_frozen + up(LN(s_L)))``, and classified by the zero-shot class
weights: at initialisation the method is the zero-shot classifier exactly. The paper
initialises the side network from the pruned backbone; here it starts at random (the
closed output gate keeps the start at zero-shot).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.features.layer_features import layer_shape
from vlkit.methods.intermediate.base import LayerMethod, layer_inputs, view_batches
from vlkit.methods.base import MethodConfig
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task
from vlkit.methods.training import TrainConfig, train


class SideNetwork(nn.Module):
    """Ladders, gates and side blocks over (N, depth, 2, W) layer features; output (N, D), zero at init."""

    def __init__(self, depth: int, width: int, embed_dim: int, reduction: int, temperature: float) -> None:
        super().__init__()
        side = max(1, width // reduction)
        heads = 1 if side < 64 else side // 64
        self.temperature = temperature
        self.ladders = nn.ModuleList(nn.Linear(width, side) for _ in range(depth))
        self.gate_logits = nn.Parameter(torch.zeros(depth))  # alpha_i; mu_i = sigmoid(alpha_i / T) = 0.5 at start
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(side, heads, 4 * side, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(depth))
        self.norm = nn.LayerNorm(side)
        self.up = nn.Linear(side, embed_dim)  # the output gate: zero, so the start is the frozen feature
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def gates(self) -> torch.Tensor:
        """(depth,) mu_i = sigmoid(alpha_i / T)."""
        return torch.sigmoid(self.gate_logits / self.temperature)

    def forward(self, layers: torch.Tensor) -> torch.Tensor:
        mu = self.gates()
        state = None
        for i, (ladder, block) in enumerate(zip(self.ladders, self.blocks)):
            down = ladder(layers[:, i])  # (N, 2, W/r)
            state = down if state is None else mu[i] * down + (1 - mu[i]) * state
            state = block(state)
        return self.up(self.norm(state[:, 0]))  # (N, D)


@dataclass
class LSTConfig(MethodConfig):
    """r = 8 and T = 0.1 as the paper; AdamW lr 3e-3 (the paper's T5 rate) over 40 epochs of the cached views."""

    reduction: int = 8
    temperature: float = 0.1
    epochs: int = 40
    lr: float = 3e-3
    weight_decay: float = 1e-2
    batch_size: int = 32

    def validate(self) -> None:
        self.check(self.reduction >= 1 and self.temperature > 0, f"reduction must be >= 1 and temperature > 0, "
                   f"got {self.reduction}, {self.temperature}")
        self.check(self.epochs >= 1 and self.lr > 0 and self.batch_size >= 1 and self.weight_decay >= 0,
                   "epochs, lr and batch_size must be positive and weight_decay >= 0")


@register_method
class LST(LayerMethod):
    """A gated ladder side network on the frozen image tower's layers, added to its final feature."""

    name = "lst"
    paper = ("Sung et al., LST: Ladder Side-Tuning for Parameter and Memory Efficient Transfer Learning, "
             "NeurIPS 2022, Sec. 3 (ladders, gates mu_i = sigmoid(alpha_i / T))")
    Config = LSTConfig

    def build(self, backbone) -> SideNetwork:
        """A fresh side network for ``backbone``'s image tower (output gate closed)."""
        self._backbone, self._device = backbone, backbone.device
        depth, _, width = layer_shape(backbone)
        return SideNetwork(depth, width, backbone.embed_dim, self.config.reduction,
                           self.config.temperature).to(backbone.device)

    def head_logits(self, layers: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        feats = F.normalize(final.to(self._device) + self.side_(layers.to(self._device)), dim=-1)  # (N, D)
        return self.logit_scale_ * feats @ self.text_weights_.to(self._device).T  # (N, C)

    def _fit(self, task: Task) -> None:
        inputs = layer_inputs(task, self.name)
        self.logit_scale_ = float(task.backbone.logit_scale)
        self.text_weights_ = task.text_weights.float()  # (C, D) zero-shot class weights
        self.side_ = self.build(task.backbone)
        labels, generator = task.train_labels, torch.Generator().manual_seed(task.seed)
        n, views = inputs.train_layers.shape[:2]
        c = self.config

        def batches(_: int):
            for rows, view in view_batches(n, views, c.batch_size, generator):
                yield inputs.train_layers[rows, view], inputs.train_final[rows, view], labels[rows]

        def loss_fn(batch) -> torch.Tensor:
            layers, final, y = batch
            return F.cross_entropy(self.head_logits(layers, final), y.to(self._device))

        has_val = inputs.val_layers is not None and task.has_val
        cfg = TrainConfig(epochs=c.epochs, lr=c.lr, optimizer="adamw", weight_decay=c.weight_decay,
                          batch_size=c.batch_size, select_on_val=has_val, keep_initial=True)
        history = train(list(self.side_.parameters()), loss_fn, batches, cfg,
                        (lambda: self.val_accuracy(inputs, task.val_labels)) if has_val else None,
                        description="training lst")
        self.fit_info_ = {"best_epoch": history["best_epoch"], "initial_val": history.get("initial_val"),
                          "val": history["val"], "loss": history["loss"], "batch_size": c.batch_size,
                          "gates": [round(float(g), 4) for g in self.side_.gates().detach()]}

    @property
    def trainable_parameters(self) -> int:
        return int(sum(p.numel() for p in self.side_.parameters())) if hasattr(self, "side_") else 0

    def state(self) -> dict[str, torch.Tensor]:
        """The side network and the (C, D) zero-shot class weights it is classified by."""
        return {"text_weights": self.text_weights_, **{f"side.{k}": v for k, v in self.side_.state_dict().items()}}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone) -> None:
        self.logit_scale_ = float(backbone.logit_scale)
        self.side_ = self.build(backbone)
        self.side_.load_state_dict({k.removeprefix("side."): v for k, v in state.items() if k.startswith("side.")})
        self.text_weights_ = state["text_weights"].float()
