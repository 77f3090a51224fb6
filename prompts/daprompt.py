"""DAPrompt / DAPL: domain adaptation via prompt learning (Ge et al., "Domain Adaptation via
Prompt Learning", arXiv:2202.06687, IEEE TNNLS 2023; Sec. 3).

The prompt of class k in domain d is
``t_k^d = [v]_1 ... [v]_M1 [d]_1 ... [d]_M2 [CLASS]_k, a {domain} image.``: M1
domain-agnostic context vectors (shared by all classes, or one set per class) followed
by M2 domain-specific vectors (one set per domain). With CLIP's
``P(y=k | x, d) = softmax_k(cos(g(t_k^d), f(x)) / tau)`` the objective is
``L = CE(source, source prompts) + U * L_u`` where
``L_u = sum_i m_i CE(x_i^t, yhat_i; target prompts) / sum_i m_i`` and ``yhat_i``,
``m_i = [max_k p_zs(k | x_i^t) >= tau]`` come from zero-shot CLIP (softmax at temperature
T). Prediction uses the target-domain prompts.

Defaults follow the authors' code (LeapLabTHU/DAPrompt, configs/trainers/DAPL/ep25-32.yaml,
trainers/dapl.py): M1 = M2 = 16, N(0, 0.02) initialisation of both contexts (agnostic
first, then domain vectors), shared context (CSC off), T = 1, tau = 0.5, U = 1, SGD lr
3e-3 with cosine decay, one warm-up epoch at 1e-5, 25 epochs, batch 32 from each domain,
an epoch = one pass over the source batches (the target batches cycle). Differences:

* The reference appends "." after ", a {domain} image." (its prompts end in ".."); we
  end with the single "." of the fixed text ", a {domain} image.".
* The reference labels each augmented target crop with the "a photo of a {c}." prompt;
  by default we label each target image once, on its evaluation view, with the task's
  zero-shot classifier (``pseudo_labels="eval"``), so the labels used are the labels
  reported (``pseudo_labels_``). ``pseudo_labels="view"`` labels the sampled crop as the
  reference does.
* An empty pseudo-label mask gives L_u = 0 (the reference divides by zero).
* The reference steps its cosine scheduler after every batch (a period of 2 x 25
  iterations); we decay once per epoch, as its config describes.
* Model selection: the reference keeps the epoch with the best *target test* accuracy.
  We never read target labels. Default ``selection="source-val"``: the epoch with the
  best source-validation accuracy under the source-domain prompts. It is labelled,
  unbiased, and what every other vlkit method selects on. The label-free alternative,
  ``"target-entropy"`` (lowest mean prediction entropy on the target), is offered but not
  the default: L_u itself drives target entropy down, so the criterion rewards confident
  pseudo-labels whether or not they are right. ``"last"`` keeps the final epoch.

Trains from cached features of both domains; the image tower never runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.errors import VlkitError
from vlkit.methods.registry import register_method
from vlkit.prompts.base import PromptConfig, PromptMethod
from vlkit.prompts.encoder import PromptedTextEncoder
from vlkit.prompts.layout import PLACEHOLDER, content_length, largest_context
from vlkit.methods.task import Task
from vlkit.methods.training import TrainConfig, feature_batches, train

SELECTIONS = ("source-val", "target-entropy", "last")
PAPER_CONTEXT = 16  # M1 = M2 = 16 in the authors' config (ep25-32.yaml)
PSEUDO_MODES = ("eval", "view")


def domain_suffix(domain: str) -> str:
    """The fixed text after the class name: ", a {domain} image"."""
    return f", a {domain} image"


def dapl_loss(logits_s: torch.Tensor, labels_s: torch.Tensor, logits_t: torch.Tensor,
              pseudo: torch.Tensor, mask: torch.Tensor, u: float) -> torch.Tensor:
    """``CE(logits_s, y_s) + u * sum(m * CE(logits_t, yhat)) / max(sum(m), 1)``.

    logits_s (B, C), labels_s (B,), logits_t (B', C), pseudo (B',), mask (B',) in {0, 1}.
    """
    loss_x = F.cross_entropy(logits_s, labels_s)
    per_image = F.cross_entropy(logits_t, pseudo, reduction="none")  # (B',)
    loss_u = (per_image * mask).sum() / mask.sum().clamp_min(1.0)
    return loss_x + u * loss_u


def zero_shot_pseudo_labels(x: torch.Tensor, text_weights: torch.Tensor, scale: float, temperature: float,
                            tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) normalised features -> pseudo-labels (N,) and mask (N,) of max prob >= tau."""
    probs = torch.softmax(scale * x @ F.normalize(text_weights, dim=-1).T / temperature, dim=-1)  # (N, C)
    confidence, labels = probs.max(dim=-1)
    return labels, (confidence >= tau).float()


class DomainPrompts(nn.Module):
    """Learned tensors: agnostic context (M1, W) or (C, M1, W) and domain contexts (2, M2, W).

    ``encoders`` (source, target) hold the frozen prompt tokens of each domain; they are
    kept out of the module's parameters and state.
    """

    def __init__(self, encoders: list[PromptedTextEncoder], n_ctx: int, n_dmx: int, class_specific: bool,
                 init_ctx: bool, init_dmx: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.encoders = list(encoders)  # a plain list: not submodules
        first = encoders[0]
        c, w, device = first.num_classes, first.width, first.base.device
        phrase = first.initial_context()  # (n, W) or (C, n, W): the init phrase (placeholders where none)
        shape = (c, n_ctx, w) if class_specific else (n_ctx, w)
        agnostic = phrase[..., :n_ctx, :].clone() if init_ctx else torch.randn(shape, generator=generator) * 0.02
        if init_dmx:
            specific = (phrase[0] if class_specific else phrase)[n_ctx:].expand(len(encoders), -1, -1).clone()
        else:
            specific = torch.randn((len(encoders), n_dmx, w), generator=generator) * 0.02
        self.agnostic = nn.Parameter(agnostic.to(device))
        self.specific = nn.Parameter(specific.to(device))  # (2, M2, W)
        self.class_specific = class_specific

    def context(self, domain: int) -> torch.Tensor:
        """(M1 + M2, W) or (C, M1 + M2, W): agnostic then domain-specific vectors."""
        specific = self.specific[domain]  # (M2, W)
        if self.class_specific:
            specific = specific.expand(self.agnostic.shape[0], -1, -1)  # (C, M2, W)
        return torch.cat([self.agnostic, specific], dim=-2)

    def text(self, domain: int, fast: bool = False) -> torch.Tensor:
        """(C, D) normalised text features of ``domain``'s prompts."""
        return F.normalize(self.encoders[domain].encode(self.context(domain), fast=fast).float(), dim=-1)


@dataclass
class DAPromptConfig(PromptConfig):
    """``n_ctx`` M1 agnostic and ``n_dmx`` M2 domain tokens; ``ctx_init``/``dmx_init`` phrases
    initialise them (their token counts then set M1/M2); ``tau`` the pseudo-label threshold,
    ``temperature`` T of its softmax, ``u`` the weight U of the target loss.

    ``n_ctx``/``n_dmx`` None (the default) is the paper's 16 each where the prompts fit the
    text tower's context (CLIP's 77 tokens); on a shorter tower (vlkit-mini's 32) it is the
    largest setting that fits the longest class name and domain text: M1 = M2 when both are
    None, else the unset one shrinks. ``fit_info_`` records what was picked and why.
    """

    n_ctx: int | None = None
    n_dmx: int | None = None
    ctx_init: str = ""
    dmx_init: str = ""
    class_specific: bool = False
    tau: float = 0.5
    temperature: float = 1.0
    u: float = 1.0
    pseudo_labels: str = "eval"
    selection: str = "source-val"
    lr: float = 3e-3

    def validate(self) -> None:
        super().validate()
        self.check(all(n is None or n >= 1 for n in (self.n_ctx, self.n_dmx)),
                   f"n_ctx and n_dmx must be >= 1 or None (fit the text tower), got {self.n_ctx}, {self.n_dmx}")
        self.check(self.temperature > 0 and self.u >= 0, f"temperature must be > 0 and u >= 0, got "
                                                         f"{self.temperature}, {self.u}")
        self.check(self.pseudo_labels in PSEUDO_MODES, f"pseudo_labels must be one of {PSEUDO_MODES}, "
                                                       f"got {self.pseudo_labels!r}")
        self.check(self.selection in SELECTIONS, f"selection must be one of {SELECTIONS}, got {self.selection!r}")

    def default_epochs(self, shots: int) -> int:
        return 25

    def train_config(self, shots: int) -> TrainConfig:
        cfg = super().train_config(shots)
        cfg.select_on_val = self.select_on_val and self.selection != "last"
        return cfg


@register_method
class DAPrompt(PromptMethod):
    """Domain-agnostic + domain-specific prompts; source CE + thresholded zero-shot pseudo-label CE."""

    name = "daprompt"
    paper = "Ge et al., Domain Adaptation via Prompt Learning, arXiv:2202.06687 (TNNLS 2023), Sec. 3"
    Config = DAPromptConfig
    task_kind = "adaptation"

    # ---- prompts -----------------------------------------------------------------------
    def _tokens(self, phrase: str) -> int:
        tower = self.backbone_.text
        return int(content_length(self.backbone_.tokenize([phrase]), getattr(tower, "pad_id", 0))[0]) - 2

    def context_sizes(self, texts: list[str]) -> tuple[int, int, dict]:
        """(M1, M2) for prompts ending in ``texts`` (class name + domain text), and a note for ``fit_info_``.

        Init phrases fix their own sizes and explicit numbers are kept (a prompt that does not
        fit is then an error); a None takes the paper's 16 or, where that does not fit the
        text tower, the largest size that does.
        """
        cfg, tower = self.config, self.backbone_.text
        n_ctx = self._tokens(cfg.ctx_init) if cfg.ctx_init else cfg.n_ctx
        n_dmx = self._tokens(cfg.dmx_init) if cfg.dmx_init else cfg.n_dmx
        if n_ctx is not None and n_dmx is not None:
            return n_ctx, n_dmx, {}
        fixed = (n_ctx or 0) + (n_dmx or 0)
        wanted = fixed + PAPER_CONTEXT * ((n_ctx is None) + (n_dmx is None))
        room = largest_context(self.backbone_.tokenize, getattr(tower, "pad_id", 0), tower.context_length, texts,
                               wanted) - fixed
        free = room // 2 if n_ctx is None and n_dmx is None else room
        if free < 1:
            raise VlkitError(f"no daprompt context fits the text tower's {tower.context_length} tokens with prompts "
                             f"ending in {max(texts, key=len)!r}: use a model with a longer text context, shorter "
                             f"class names, or smaller n_ctx")
        picked = (n_ctx if n_ctx is not None else free, n_dmx if n_dmx is not None else free)
        if room >= wanted - fixed:
            return (*picked, {})
        return (*picked, {"context_fitted": f"the paper's {PAPER_CONTEXT} tokens per context do not fit the text "
                                            f"tower's {tower.context_length} tokens with the longest prompt; picked "
                                            f"n_ctx={picked[0]}, n_dmx={picked[1]}, the largest that fit"})

    def build(self, classnames: list[str], generator: torch.Generator) -> nn.Module:
        cfg = self.config
        texts = [f"{c}{domain_suffix(d)}" for d in self.domains_ for c in classnames]
        saved = getattr(self, "_saved_sizes", None)  # restore: the sizes of the saved state
        n_ctx, n_dmx, self.context_note_ = (*saved, {}) if saved else self.context_sizes(texts)
        phrase = " ".join([cfg.ctx_init or " ".join([PLACEHOLDER] * n_ctx),
                           cfg.dmx_init or " ".join([PLACEHOLDER] * n_dmx)])
        encoders = [PromptedTextEncoder(self.backbone_, [f"{c}{domain_suffix(d)}" for c in classnames], init=phrase,
                                        class_specific=cfg.class_specific, generator=torch.Generator().manual_seed(0))
                    for d in self.domains_]
        if encoders[0].n_ctx != n_ctx + n_dmx:
            raise VlkitError(f"the context phrase {phrase!r} tokenizes into {encoders[0].n_ctx} tokens, "
                             f"expected {n_ctx} + {n_dmx}")
        return DomainPrompts(encoders, n_ctx, n_dmx, cfg.class_specific, bool(cfg.ctx_init), bool(cfg.dmx_init),
                             generator)

    @property
    def prompt_texts(self) -> list[list[str]]:
        """The tokenized prompt strings, per domain (source, target): (2, C)."""
        return [enc.layout.texts for enc in self.net_.encoders]

    # ---- logits ------------------------------------------------------------------------
    def domain_logits(self, x: torch.Tensor, domain: int, fast: bool = True) -> torch.Tensor:
        """(B, D) normalised features -> (B, C) logits under ``domain``'s prompts (0 source, 1 target)."""
        return self.scale * x @ self.net_.text(domain, fast).T

    def train_logits(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        return self.domain_logits(x, 1, fast)

    def inference_state(self) -> None:
        with torch.no_grad():
            self.text_features_ = self.net_.text(1, fast=False)  # (C, D) target-domain prompts

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x @ self.text_features_.T

    # ---- fitting -----------------------------------------------------------------------
    def _fit(self, task: Task) -> None:
        if task.unlabeled_features is None:
            raise VlkitError("daprompt adapts to an unlabelled target domain: build the task with "
                             "vlkit.protocols.adaptation.build_adaptation_task (task.unlabeled_features is missing)")
        self.domains_ = [str(task.extras.get("source_domain", "source")), str(task.extras.get("target_domain",
                                                                                              "target"))]
        views = task.extras.get("target_views")
        self.target_views_ = views if views is not None else task.unlabeled_features[:, None]  # (Nt, 1 + V, D)
        scale = float(task.backbone.logit_scale)
        labels, mask = zero_shot_pseudo_labels(F.normalize(self.target_views_[:, 0].float(), dim=-1),
                                               task.text_weights, scale, self.config.temperature, self.config.tau)
        self.pseudo_, self.mask_ = labels, mask  # (Nt,), (Nt,)
        keep = mask.nonzero().flatten()
        self.pseudo_labels_ = (keep, labels[keep])
        super()._fit(task)
        self.fit_info_.update({"pseudo_labels": int(len(keep)), "selection": self.config.selection,
                               "n_ctx": self.net_.agnostic.shape[-2], "n_dmx": self.net_.specific.shape[1],
                               **self.context_note_})
        del self.target_views_

    def run_training(self, task: Task, cfg: TrainConfig) -> dict:
        """Paired source/target batches per step; the shared loop; selection per ``selection``."""
        device, conf = self.backbone_.device, self.config
        batches = torch.Generator().manual_seed(task.seed)
        target = self.target_views_
        index = torch.arange(len(target))

        def make_batches(epoch: int) -> list:
            src = feature_batches(task.train_features, task.train_labels, cfg.batch_size, batches, conf.augment)
            tgt: list = []
            while len(tgt) < len(src):  # the target stream restarts (reshuffled) when exhausted
                tgt += feature_batches(target, index, cfg.batch_size, batches, conf.augment)
            return [(xs, ys, xt, it) for (xs, ys), (xt, it) in zip(src, tgt)]

        def loss_fn(batch) -> torch.Tensor:
            xs, ys, xt, it = batch
            xs, xt = F.normalize(xs.to(device), dim=-1), F.normalize(xt.to(device), dim=-1)
            if conf.pseudo_labels == "eval":
                pseudo, mask = self.pseudo_[it].to(device), self.mask_[it].to(device)
            else:
                pseudo, mask = zero_shot_pseudo_labels(xt.float(), task.text_weights.to(device), self.scale,
                                                       conf.temperature, conf.tau)
            return self.loss_pair(xs, ys.to(device), xt, pseudo, mask)

        score = self.selection_scorer(task) if conf.selection != "last" else None
        history = train(list(self.net_.parameters()), loss_fn, make_batches, cfg, val_score=score,
                        autocast=self.backbone_.autocast, description=self.name)
        return {"best_epoch": history["best_epoch"], "best_score": history.get("best_val"),
                "final_loss": history["loss"][-1] if history["loss"] else None}

    def loss_pair(self, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, pseudo: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
        """The DAPL objective on one source batch (B, D) and one target batch (B', D), normalised."""
        return dapl_loss(self.domain_logits(xs, 0), ys, self.domain_logits(xt, 1), pseudo, mask, self.config.u)

    def selection_scorer(self, task: Task):
        """Higher is better: source-val accuracy (source prompts) or minus mean target entropy."""
        device = self.backbone_.device
        if self.config.selection == "source-val":
            if not task.has_val:
                return None
            x, y, domain = F.normalize(task.val_features.to(device), dim=-1), task.val_labels.to(device), 0
        else:
            x, y, domain = F.normalize(self.target_views_[:, 0].to(device).float(), dim=-1), None, 1

        def score() -> float:
            with torch.no_grad(), self.backbone_.autocast():
                logits = self.domain_logits(x, domain, fast=True).float()  # (M, C)
            if y is not None:
                return float((logits.argmax(dim=-1) == y).float().mean())
            p = logits.softmax(dim=-1)
            return -float(-(p * p.clamp_min(1e-12).log()).sum(dim=-1).mean())

        return score

    # ---- persistence -------------------------------------------------------------------
    def meta(self) -> dict:
        return {**super().meta(), "domains": list(self.domains_)}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone: Any) -> None:
        self.domains_ = list(meta["domains"])
        self._saved_sizes = (int(state["agnostic"].shape[-2]), int(state["specific"].shape[1]))
        try:
            super().restore(state, meta, backbone)
        finally:
            del self._saved_sizes
