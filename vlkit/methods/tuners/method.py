"""The registered tuners: LoRA, prefix tuning, VPT (shallow/deep), BitFit, adapters, IA3.

Each is a :class:`~vlkit.methods.tuners.base.TunerMethod` whose ``inject`` goes through
the surgery module (:mod:`vlkit.backbones.surgery`) on its own shared copy of the backbone.
Training defaults are CLIP-LoRA's recipe (see :mod:`vlkit.methods.tuners.base`); only the
learning rate differs per tuner, as noted on each config.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vlkit.backbones.surgery import (ROLES, attach, attention_of, get_module, patch_size, select_blocks, set_module,
                                     tower_depth, tower_modules, tower_width, train_clones, wrap_roles)
from vlkit.methods.registry import register_method
from vlkit.methods.tuners import bottleneck as adapters
from vlkit.methods.tuners.base import TunerConfig, TunerMethod
from vlkit.methods.tuners.ia3 import IA3Linear
from vlkit.methods.tuners.lora import LoRALinear
from vlkit.methods.tuners.model import TunedCLIP
from vlkit.methods.tuners.prefix import Prefix
from vlkit.methods.tuners.vpt import PROMPT_START, LayerPrompts, vpt_prompts
from vlkit.methods.tuners.wrappers import TunerDropout


@dataclass
class LoRAConfig(TunerConfig):
    """CLIP-LoRA's preset: rank 2, alpha 1, dropout 0.25 on q/k/v of both towers, AdamW 2e-4."""

    quick = {**TunerConfig.quick, "lr": 2e-3}  # few-step learning rate (TunerConfig.quick)
    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v"])
    scaling: str = "sqrt"  # "sqrt": alpha / sqrt(r) (CLIP-LoRA's code); "linear": alpha / r (Hu et al.)
    merge: bool = True  # fold B A into the weights after fit/load: no extra cost at inference

    def validate(self) -> None:
        super().validate()
        self.check(self.rank >= 1 and self.alpha > 0, f"rank must be >= 1 and alpha > 0, got {self.rank}, {self.alpha}")
        self.check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        self.check(len(self.targets) > 0 and set(self.targets) <= set(ROLES), f"targets must be among {ROLES}")
        self.check(self.scaling in ("sqrt", "linear"), f"scaling must be 'sqrt' or 'linear', got {self.scaling!r}")


@register_method
class LoRA(TunerMethod):
    """Low-rank updates of the attention projections, split out of open_clip's fused q/k/v."""

    name = "lora"
    paper = ("Hu et al., LoRA, ICLR 2022, Eq. (3); preset from Zanella & Ben Ayed, Low-Rank Few-Shot "
             "Adaptation of Vision-Language Models (CLIP-LoRA), CVPRW 2024")
    Config = LoRAConfig

    def inject(self, tuned: TunedCLIP) -> None:
        c = self.config
        for tower in self.towers:
            wrap_roles(tuned.model, select_blocks(tuned.blocks[tower], c.layers), c.targets,
                       lambda m, _: LoRALinear(m, c.rank, c.alpha, c.dropout, c.scaling))

    def lora_layers(self) -> list[LoRALinear]:
        """Every LoRA-wrapped projection."""
        return [m for m in self.tuned_.model.modules() if isinstance(m, LoRALinear)]

    def merge(self) -> None:
        """Fold ``s B A`` into new weights (the backbone's are never touched)."""
        for layer in self.lora_layers():
            layer.merge()
        self._finalize_weights()

    def unmerge(self) -> None:
        """Return to the separate low-rank branches."""
        for layer in self.lora_layers():
            layer.unmerge()
        self._finalize_weights()

    def _finalize_weights(self) -> None:
        if "text" in self.towers:
            with torch.no_grad(), self._autocast():
                self.text_weights_ = self._text_weights(self._tokens).float().cpu()

    def _finalize(self, backbone) -> None:
        self._tokens = self._class_tokens(backbone)
        super()._finalize(backbone)

    def _fit(self, task) -> None:
        super()._fit(task)
        if self.config.merge:
            self.merge()

    def restore(self, state, meta, backbone) -> None:
        super().restore(state, meta, backbone)
        if self.config.merge:
            self.merge()


@dataclass
class PrefixConfig(TunerConfig):
    """Prefix length 10 (Li & Liang's table-to-text setting); lr 1e-3 is our choice."""

    quick = {**TunerConfig.quick, "lr": 1e-2}  # few-step learning rate (TunerConfig.quick)
    tower: str = "text"
    length: int = 10
    init: str = "words"  # "words": activations of a real phrase (Li & Liang Sec. 7.4); "random": N(0, 0.02)
    lr: float = 1e-3

    def validate(self) -> None:
        super().validate()
        self.check(self.length >= 0, f"length must be >= 0, got {self.length}")
        self.check(self.init in ("words", "random"), f"init must be 'words' or 'random', got {self.init!r}")


@register_method
class PrefixTuning(TunerMethod):
    """Learned key/value prefixes at every attention layer of the text tower."""

    name = "prefix-tuning"
    paper = "Li & Liang, Prefix-Tuning: Optimizing Continuous Prompts for Generation, ACL 2021, Sec. 4.2, Eq. (3)"
    Config = PrefixConfig
    towers_allowed = ("text",)

    def inject(self, tuned: TunedCLIP) -> None:
        blocks = select_blocks(tuned.blocks["text"], self.config.layers)
        attentions = [attention_of(tuned.model, b) for b in blocks]
        for attn in attentions:
            device = attn.k_proj.weight.device
            attn.prefix = Prefix(self.config.length, attn.width, 0.02, device=device)
        if self.config.init == "words" and self.config.length > 0:
            _init_from_words(tuned, attentions, self.config.length, getattr(self, "_init_tokens", None))

    def _fit(self, task) -> None:
        phrase = (task.templates[0] if task.templates else "a photo of a {}.").replace("{}", "").strip()
        self._init_tokens = task.backbone.tokenize([phrase])  # (1, L)
        super()._fit(task)


def _init_from_words(tuned: TunedCLIP, attentions: list, length: int, tokens: torch.Tensor | None) -> None:
    """Set each layer's prefix to the frozen keys/values of a real phrase (cycled to ``length``)."""
    if tokens is None:  # restoring: the saved state overwrites the prefix anyway
        return
    for attn in attentions:
        attn.recording = []
    with torch.no_grad():
        tuned.encode_tokens(tokens)
    for attn in attentions:
        (k, v), attn.recording = attn.recording[0], None  # (1, L', W) each
        idx = torch.arange(length) % k.shape[1]
        attn.prefix.key.data.copy_(k[0, idx])
        attn.prefix.value.data.copy_(v[0, idx])


@dataclass
class VPTConfig(TunerConfig):
    """10 prompt tokens (from VPT's grid {1, 5, 10, 50, 100, 200}); lr 1e-3 is our choice."""

    quick = {**TunerConfig.quick, "lr": 1e-1}  # few-step learning rate (TunerConfig.quick)
    tower: str = "image"
    tokens: int = 10
    dropout: float = 0.0
    lr: float = 1e-3

    def validate(self) -> None:
        super().validate()
        self.check(self.tokens >= 0, f"tokens must be >= 0, got {self.tokens}")
        self.check(self.layers is None, "VPT prompts every layer (deep) or the first (shallow): leave layers=None")


class _VPT(TunerMethod):
    deep = False
    towers_allowed = ("image",)
    Config = VPTConfig
    paper = "Jia et al., Visual Prompt Tuning, ECCV 2022, Eq. (3)-(5) shallow, Eq. (6)-(7) deep"

    def inject(self, tuned: TunedCLIP) -> None:
        model, c = tuned.model, self.config
        layers = tower_depth(model, "image") if self.deep else 1
        device = next(model.parameters()).device
        prompts = vpt_prompts(layers, c.tokens, tower_width(model, "image"), patch_size(model), device)
        attach(model, "image", "prompts", prompts)  # saved as visual.transformer.prompts, (layers, P, W)
        dropout = TunerDropout(c.dropout) if c.dropout > 0 else nn.Identity()
        attach(model, "image", "prompt_dropout", dropout)  # in the model, so ``tuning`` switches it
        tuned.add_image_tokens(LayerPrompts(prompts, dropout), PROMPT_START)


@register_method
class VPTShallow(_VPT):
    """Learned tokens at the input of the first image-tower layer."""

    name = "vpt-shallow"


@register_method
class VPTDeep(_VPT):
    """New learned tokens at the input of every image-tower layer."""

    name = "vpt-deep"
    deep = True


@dataclass
class BitFitConfig(TunerConfig):
    """Biases of the chosen towers; lr 1e-3 is the top of BitFit's grid {1e-4, ..., 1e-3}."""

    quick = {**TunerConfig.quick, "lr": 1e-2}  # few-step learning rate (TunerConfig.quick)
    lr: float = 1e-3


@register_method
class BitFit(TunerMethod):
    """Train only the bias terms (copies of them: the backbone's stay frozen)."""

    name = "bitfit"
    paper = ("Ben Zaken et al., BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based MLMs, "
             "ACL 2022, Sec. 2")
    Config = BitFitConfig

    def inject(self, tuned: TunedCLIP) -> None:
        for tower in self.towers:
            if self.config.layers is not None:
                for block in select_blocks(tuned.blocks[tower], self.config.layers):
                    train_clones(get_module(tuned.model, block.path), lambda _, name: name == "bias")
                continue
            for _, module in tower_modules(tuned.model, tower):
                train_clones(module, lambda _, name: name == "bias")


@dataclass
class AdapterConfig(TunerConfig):
    """Bottleneck 64; AdaptFormer's scale 0.1 and dropout 0.1; lr 1e-3 (Houlsby's grid top)."""

    quick = {**TunerConfig.quick, "lr": 1e-3}  # few-step learning rate (TunerConfig.quick)
    style: str = "houlsby"  # "houlsby" (serial, two per layer) or "adaptformer" (parallel to the MLP)
    bottleneck: int = 64
    scale: float = 0.1  # AdaptFormer's s
    activation: str = "relu"
    dropout: float = 0.0
    train_layernorm: bool | None = None  # None: True for Houlsby (Sec. 2.1), False for AdaptFormer
    lr: float = 1e-3

    def validate(self) -> None:
        super().validate()
        self.check(self.style in ("houlsby", "adaptformer"), f"style must be houlsby|adaptformer, got {self.style!r}")
        self.check(self.bottleneck >= 1, f"bottleneck must be >= 1, got {self.bottleneck}")
        self.check(self.activation in adapters.ACTIVATIONS, f"activation must be one of {sorted(adapters.ACTIVATIONS)}")
        self.check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")


@register_method
class Adapter(TunerMethod):
    """Bottleneck adapters inside every block: Houlsby (serial) or AdaptFormer (parallel)."""

    name = "adapter"
    paper = ("Houlsby et al., Parameter-Efficient Transfer Learning for NLP, ICML 2019, Sec. 2.1; "
             "Chen et al., AdaptFormer, NeurIPS 2022, Eq. (2)-(3)")
    Config = AdapterConfig

    def inject(self, tuned: TunedCLIP) -> None:
        c = self.config
        for tower in self.towers:
            blocks = select_blocks(tuned.blocks[tower], c.layers)
            if c.style == "houlsby":
                wrap_roles(tuned.model, blocks, ("out", "fc2"), lambda m, _: adapters.SerialAdapter(
                    m, adapters.Bottleneck(m.out_features, c.bottleneck, c.activation, c.dropout, m.weight.device)))
            else:
                for b in blocks:
                    tap, par = adapters.parallel_pair(get_module(tuned.model, b.fc1), get_module(tuned.model, b.fc2),
                                                      c.bottleneck, c.scale, c.activation, c.dropout)
                    set_module(tuned.model, b.fc1, tap)
                    set_module(tuned.model, b.fc2, par)
            if c.train_layernorm if c.train_layernorm is not None else c.style == "houlsby":
                for b in blocks:
                    train_clones(get_module(tuned.model, b.path), lambda mod, _: isinstance(mod, nn.LayerNorm))


@dataclass
class IA3Config(TunerConfig):
    """lr 3e-3 as T-Few (Liu et al. 2022, Sec. 3.3 / App.)."""

    quick = {**TunerConfig.quick, "lr": 3e-2}  # few-step learning rate (TunerConfig.quick)
    lr: float = 3e-3


@register_method
class IA3(TunerMethod):
    """Learned vectors rescaling keys, values and the feed-forward hidden activations."""

    name = "ia3"
    paper = ("Liu et al., Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning, "
             "NeurIPS 2022, Sec. 3.3")
    Config = IA3Config

    def inject(self, tuned: TunedCLIP) -> None:
        for tower in self.towers:
            blocks = select_blocks(tuned.blocks[tower], self.config.layers)
            wrap_roles(tuned.model, blocks, ("k", "v"), lambda m, _: IA3Linear(m, "out"))
            wrap_roles(tuned.model, blocks, ("fc2",), lambda m, _: IA3Linear(m, "in"))
