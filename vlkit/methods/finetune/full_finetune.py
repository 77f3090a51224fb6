"""Full fine-tuning (the reference) and WiSE-FT (Wortsman et al., CVPR 2022).

Full fine-tuning trains every weight of the image tower (``tower="both"``: of the text
tower too) with the classifier initialised from the zero-shot head, as WiSE-FT's
end-to-end fine-tuning (Sec. 2): with the image tower alone the head is a trained (C, D)
matrix starting at the normalised zero-shot class weights; with both towers the class
weights come from the tuned text tower. Recipe: WiSE-FT's optimiser (AdamW, weight decay
0.1, learning rate 3e-5) on CLIP-LoRA's batches and iterations (the tuners' schedule, so
the comparison with them is at equal steps), chunks scored on validation.

WiSE-FT, Eq. (1): ``theta_alpha = (1 - alpha) theta_0 + alpha theta_1`` for every tuned
tensor, head included (theta_0: the zero-shot weights and head; theta_1: fine-tuned).
The paper reports alpha = 0.5 and also picks alpha on held-out data; here alpha is chosen
on the validation split over ``alphas`` (ties toward 0.5). alpha = 0 is the zero-shot
model and alpha = 1 the fine-tuned one exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.backbones.surgery import get_module
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task
from vlkit.methods.tuners.base import TunerConfig, TunerMethod
from vlkit.methods.tuners.model import TunedCLIP

HEAD = "class_head"  # the trained (C, D) head's name on the tuned model (image tower only)
_NOT_TUNED = ("logit_scale", "logit_bias")


@dataclass
class FullFineTuneConfig(TunerConfig):
    """WiSE-FT's fine-tuning optimiser (AdamW, lr 3e-5, weight decay 0.1) on the tuners' schedule."""

    # Few-step learning rate (TunerConfig.quick). Fashion-MNIST-mini, 16 shots, vlkit-mini: 70.8% against
    # zero-shot's 27.6%, a gain over half of any schedule's possible gain (100 - 27.6), so the quick job runs it.
    quick = {**TunerConfig.quick, "lr": 1e-4}
    tower: str = "image"
    lr: float = 3e-5
    weight_decay: float = 0.1


def _in_tower(name: str, tower: str) -> bool:
    """Whether parameter ``name`` (of an open_clip CLIP/CustomTextCLIP) belongs to ``tower``."""
    if name in _NOT_TUNED:
        return False
    return name.startswith("visual.") == (tower == "image")


@register_method
class FullFineTune(TunerMethod):
    """Every weight of the image tower (or both towers) trained, head initialised at zero-shot."""

    name = "full-finetune"
    family = "finetune"
    paper = ("Wortsman et al., Robust fine-tuning of zero-shot models (WiSE-FT), CVPR 2022, Sec. 2 "
             "(end-to-end fine-tuning with the zero-shot head)")
    Config = FullFineTuneConfig
    towers_allowed = ("image", "both")
    keep_initial = True  # the zero-shot start is a selection candidate

    # ---- building -----------------------------------------------------------------------
    def build(self, backbone) -> TunedCLIP:
        """A shared copy whose tuned towers' parameters are trainable copies (names as the backbone's)."""
        self._autocast, self._device = backbone.autocast, backbone.device
        self._tokens = self._class_tokens(backbone)
        tuned = TunedCLIP(backbone, ())  # no attention split: parameter names stay the backbone's
        tuned.towers = self.towers
        self.inject(tuned)
        return tuned

    def inject(self, tuned: TunedCLIP) -> None:
        model = tuned.model
        self._zero_shot: dict[str, torch.Tensor] = {}  # theta_0 of every tuned tensor (shared, not copied)
        for name, p in list(model.named_parameters()):
            if any(_in_tower(name, t) for t in self.towers):
                self._zero_shot[name] = p.detach()
                owner, _, attr = name.rpartition(".")
                setattr(get_module(model, owner), attr, nn.Parameter(p.detach().clone(), requires_grad=True))
        if "text" not in self.towers:
            with torch.no_grad(), self._autocast():
                head = self._text_weights_of(tuned).float()  # (C, D) normalised zero-shot weights
            self._zero_shot[HEAD] = head.clone()
            model.register_parameter(HEAD, nn.Parameter(head, requires_grad=True))

    def _text_weights_of(self, tuned: TunedCLIP) -> torch.Tensor:
        feats = tuned.encode_tokens(self._tokens).view(len(self.classnames_), len(self.templates_), -1)
        return F.normalize(feats.mean(dim=1), dim=-1)  # (C, D)

    def _class_weights(self) -> torch.Tensor:
        """(C, D) classifier: the trained head, or the tuned text tower's class weights."""
        if "text" in self.towers:
            return self._text_weights_of(self.tuned_)
        return getattr(self.tuned_.model, HEAD)

    def _finalize(self, backbone) -> None:
        self.tuned_.tuning(False)
        with torch.no_grad(), self._autocast():
            self.text_weights_ = self._class_weights().float().cpu()  # (C, D)

    # ---- training (the tuners' loop: TunerMethod._fit) ---------------------------------------
    def _weights_train(self) -> bool:
        """The head (or the tuned text tower's class weights) trains with the tower."""
        return True

    def _training_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._class_weights()


@dataclass
class WiSEFTConfig(FullFineTuneConfig):
    """The fine-tuning of :class:`FullFineTuneConfig`, then alpha chosen on validation over ``alphas``."""

    alphas: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])

    def validate(self) -> None:
        super().validate()
        self.check(len(self.alphas) > 0 and all(0.0 <= a <= 1.0 for a in self.alphas),
                   f"alphas must be a non-empty list of values in [0, 1], got {self.alphas}")


@register_method
class WiSEFT(FullFineTune):
    """Weight-space ensemble ``(1 - alpha) zero-shot + alpha fine-tuned``, alpha chosen on validation."""

    name = "wise-ft"
    paper = "Wortsman et al., Robust fine-tuning of zero-shot models (WiSE-FT), CVPR 2022, Eq. (1)"
    Config = WiSEFTConfig
    keep_initial = False  # theta_1 is a fine-tuned model; alpha = 0 already covers the zero-shot one

    def mix(self, alpha: float) -> None:
        """Set every tuned tensor to ``(1 - alpha) theta_0 + alpha theta_1`` (the backbone is untouched)."""
        with torch.no_grad():
            for name, p in self.tuned_.parameters_to_train().items():
                theta0, theta1 = self._zero_shot[name].to(p.device), self.finetuned_[name].to(p.device)
                p.copy_((1.0 - alpha) * theta0 + alpha * theta1)
        self.alpha_ = float(alpha)
        self._finalize(None)

    def _fit(self, task: Task) -> None:
        super()._fit(task)
        self.finetuned_ = {name: p.detach().clone() for name, p in self.tuned_.parameters_to_train().items()}
        scores: dict[float, float] = {}
        if task.has_val:
            val_x = self._val_inputs(task)
            for alpha in self.config.alphas:
                self.mix(alpha)
                scores[alpha] = float((self._logits(val_x).argmax(dim=-1) == task.val_labels).float().mean())
            best = max(scores.values())
            chosen = min((a for a, s in scores.items() if s == best), key=lambda a: (abs(a - 0.5), a))
        else:
            chosen = 0.5 if 0.5 in self.config.alphas else self.config.alphas[len(self.config.alphas) // 2]
        self.mix(chosen)
        self.fit_info_.update({"alpha": chosen, "alpha_val": {str(a): s for a, s in scores.items()}})

    def state(self) -> dict[str, torch.Tensor]:
        """theta_1, the fine-tuned tensors (alpha is in the config.json meta)."""
        return dict(self.finetuned_)

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "alpha": self.alpha_}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone: Any) -> None:
        super().restore(state, meta, backbone)
        self.finetuned_ = {name: p.detach().clone() for name, p in self.tuned_.parameters_to_train().items()}
        self.mix(float(meta["alpha"]))
