"""What a fitted feature-level method learned, folded into a plain module: (N, D) features -> (N, C) logits.

Each rule reads the fitted method's learned attributes once and keeps only fixed
matrices (buffers) and plain layers, so the exported graph is matmuls and
element-wise ops: prompt learners become their fixed text weights, the cache models
(Tip-Adapter(-F), APE(-T), TIP-X, GDA, the self-training cache) become their key and
value matrices, the linear probe and CLIP-Adapter stay layers. Every head takes
L2-normalised image features, as ``Backbone.encode_images`` gives them, and
normalises again as the methods' own ``_logits`` do (a no-op up to rounding).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """``normalize(x) @ W.T + b``: every method whose logits are affine in the normalised features."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, renormalize: bool = True) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().float().cpu().clone())  # (C, D)
        bias = torch.zeros(len(weight)) if bias is None else bias.detach().float().cpu().reshape(-1).clone()
        self.register_buffer("bias", bias)  # (C,)
        self.renormalize = renormalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1) if self.renormalize else x
        return x @ self.weight.T + self.bias  # (N, C)


class CacheHead(nn.Module):
    """Tip-Adapter's ``scale x W^T + alpha exp(-beta (1 - q K^T)) V`` with the cache as matrices.

    ``channels`` (APE): the queries are the refined channels ``q = normalize(x[:, channels])``.
    ``top_k``: keep only the k largest affinities per query (the FAISS path of caches above
    ``sparse_above`` entries, done exactly with TopK). ``kl`` (TIP-X): the support's log
    signatures (N, C), temperature, the fit-time rescaling ranges and gamma add
    ``-gamma * rescale(KL(q || s)) @ V0`` with the unscaled one-hot values V0.
    """

    def __init__(self, text: torch.Tensor, scale: float, keys: torch.Tensor, values: torch.Tensor,
                 alpha: float, beta: float, channels: torch.Tensor | None = None, top_k: int | None = None,
                 kl: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.register_buffer("text", text.detach().float().cpu().clone())  # (C, D)
        self.register_buffer("keys", keys.detach().float().cpu().clone())  # (N, D or Q)
        self.register_buffer("values", values.detach().float().cpu().clone())  # (N, C)
        self.register_buffer("channels", None if channels is None else channels.detach().long().cpu().clone())
        self.scale, self.alpha, self.beta, self.top_k = float(scale), float(alpha), float(beta), top_k
        self.kl = kl is not None
        if kl is not None:
            self.register_buffer("support_logsig", kl["support_logsig"].detach().float().cpu().clone())  # (N, C)
            self.register_buffer("one_hot", kl["one_hot"].detach().float().cpu().clone())  # (N, C)
            self.temperature, self.gamma = float(kl["temperature"]), float(kl["gamma"])
            self.kl_min, self.kl_max, self.aff_min, self.aff_max = (float(v) for v in kl["ranges"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)  # (M, D)
        clip = self.scale * x @ self.text.T  # (M, C)
        q = x if self.channels is None else F.normalize(x[:, self.channels], dim=-1)
        affinity = q @ self.keys.T  # (M, N)
        if self.top_k is None:
            cache = torch.exp(-self.beta * (1 - affinity)) @ self.values  # (M, C)
        else:
            scores, ids = affinity.topk(self.top_k, dim=-1)  # (M, k)
            weights = torch.exp(-self.beta * (1 - scores))
            cache = (weights.unsqueeze(-1) * self.values[ids]).sum(dim=1)  # (M, k, C) -> (M, C)
        logits = clip + self.alpha * cache
        if self.kl:
            logits = logits + self.gamma * self._kl_logits(x)
        return logits

    def _kl_logits(self, x: torch.Tensor) -> torch.Tensor:
        """TIP-X's (M, C) ``-rescale(KL(p(x) || p(support))) @ V0``."""
        z = x @ self.text.T / self.temperature  # (M, C)
        p, logp = z.softmax(dim=-1), z.log_softmax(dim=-1)
        kl = (p * logp).sum(-1, keepdim=True) - p @ self.support_logsig.T  # (M, N)
        scaled = (kl - self.kl_min) / max(self.kl_max - self.kl_min, 1e-12) * (self.aff_max - self.aff_min) \
            + self.aff_min
        return -scaled @ self.one_hot


class GDAHead(nn.Module):
    """GDA: ``scale x T^T + alpha (x W^T + b)``, the two terms kept apart as the method sums them
    (folding them into one matrix reassociates sums whose terms reach thousands on weak features)."""

    def __init__(self, text: torch.Tensor, scale: float, weight: torch.Tensor, bias: torch.Tensor,
                 alpha: float) -> None:
        super().__init__()
        self.register_buffer("text", text.detach().float().cpu().clone())  # (C, D)
        self.register_buffer("weight", weight.detach().float().cpu().clone())  # (C, D)
        self.register_buffer("bias", bias.detach().float().cpu().reshape(-1).clone())  # (C,)
        self.scale, self.alpha = float(scale), float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        return self.scale * x @ self.text.T + self.alpha * (x @ self.weight.T + self.bias)  # (N, C)


class ClipAdapterHead(nn.Module):
    """CLIP-Adapter: the image adapter stays a layer; the text side (fixed per class) is folded."""

    def __init__(self, adapter: nn.Module, ratio: float, text: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.adapter = copy.deepcopy(adapter).float().cpu().eval()
        self.register_buffer("text", F.normalize(text.detach().float().cpu(), dim=-1).clone())  # (C, D)
        self.ratio, self.scale = float(ratio), float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.ratio * self.adapter(x) + (1 - self.ratio) * x  # (N, D), Eq. (4)
        return self.scale * F.normalize(f, dim=-1) @ self.text.T  # (N, C)


class QueryLinearHead(nn.Module):
    """DeFo: fixed query features (Q, D) and the learned linear layer Q -> C kept as a layer."""

    def __init__(self, queries: torch.Tensor, scale: float, head: nn.Module) -> None:
        super().__init__()
        self.register_buffer("queries", queries.detach().float().cpu().clone())  # (Q, D)
        self.head = copy.deepcopy(head).float().cpu().eval()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.scale * F.normalize(x, dim=-1) @ self.queries.T)  # (N, Q) -> (N, C)


# ---- the rules: one per method (or family of methods sharing a logits formula) ----------------
def _zero_shot(m: Any) -> nn.Module:
    return LinearHead(m.logit_scale_ * m.text_weights_)


def _linear_probe(m: Any) -> nn.Module:
    return LinearHead(m.weight_, m.bias_, renormalize=False)  # the probe reads the features as given


def _lp_plus_plus(m: Any) -> nn.Module:
    alpha = m.alpha_.detach().float().reshape(-1, 1)  # (C, 1) or (1, 1)
    return LinearHead(m.weight_ + alpha * m.text_weights_, m.bias_)  # x W^T + b + alpha x T^T


def _zs_lp(m: Any) -> nn.Module:
    return LinearHead(m.logit_scale_ * F.normalize(m.prototypes_.detach(), dim=-1))


def _gda(m: Any) -> nn.Module:
    return GDAHead(m.text_weights_, m.logit_scale_, m.weight_, m.bias_, m.alpha_)


def _prompt_text(m: Any) -> nn.Module:
    """CoOp, KgCoOp, DAPrompt: the learned prompts' text features, computed once at fit/load."""
    return LinearHead(m.scale * m.text_features_)


def _text_tuner(m: Any) -> nn.Module:
    """A tuner of the text tower only: its class weights were computed once after tuning."""
    return LinearHead(m.logit_scale_ * m.text_weights_)


def _defo(m: Any) -> nn.Module:
    return QueryLinearHead(m.queries_, m.scale, m.net_.head)


def _clip_adapter(m: Any) -> nn.Module:
    text = m.text_weights_
    if m.text_adapter_ is not None:
        b = m.config.text_ratio
        with torch.no_grad():
            text = b * m.text_adapter_(text) + (1 - b) * text  # Eq. (5), fixed per class
    return ClipAdapterHead(m.adapter_, m.config.ratio, text, m.logit_scale_)


def _top_k(m: Any) -> int | None:
    """k when the cache answers from its FAISS index (above ``sparse_above`` entries), else None (dense)."""
    store = m._store
    return None if store.index is None else min(store.top_k, len(store.keys))


def _tip_adapter(m: Any) -> nn.Module:
    """Tip-Adapter, Tip-Adapter-F, APE-T (trained keys, text and value weights), the self-training cache.

    An empty cache (an upgrade run before its first example) adds nothing: the head is zero-shot's.
    """
    if len(m._store.keys) == 0:
        return LinearHead(m.logit_scale_ * m.text_weights_)
    return CacheHead(m.text_weights_, m.logit_scale_, m._store.keys, m._values.dense(), m.alpha_, m.beta_,
                     top_k=_top_k(m))


def _ape(m: Any) -> nn.Module:
    values = m._values.scaled(torch.exp(m.gamma_ * m.kl_)).dense()  # diag(exp(gamma KL)) L
    return CacheHead(m.text_weights_, m.logit_scale_, m._store.keys, values, m.alpha_, m.beta_,
                     channels=m.channels_, top_k=_top_k(m))


def _tipx(m: Any) -> nn.Module:
    kl = {"support_logsig": m._support_logsig, "one_hot": m._values.dense(), "temperature": m.config.temperature,
          "gamma": m.gamma_, "ranges": m.ranges_.tolist()}
    return CacheHead(m.text_weights_, m.logit_scale_, m._store.keys, m._values.dense(), m.alpha_, m.beta_,
                     top_k=_top_k(m), kl=kl)


FEATURE_HEADS: dict[str, Callable[[Any], nn.Module]] = {
    "zero-shot": _zero_shot,
    "linear-probe": _linear_probe,
    "tip-adapter": _tip_adapter,
    "tip-adapter-f": _tip_adapter,
    "ape": _ape,
    "ape-t": _tip_adapter,
    "tip-x": _tipx,
    "gda": _gda,
    "self-training-cache": _tip_adapter,
    "coop": _prompt_text,
    "kgcoop": _prompt_text,
    "daprompt": _prompt_text,
    "defo": _defo,
    "clip-adapter": _clip_adapter,
    "lp++": _lp_plus_plus,
    "zs-linear-probe": _zs_lp,
    "clap": _zs_lp,
}
"""Feature-level method name -> the rule folding the fitted method into a head."""

TEXT_TUNERS = ("lora", "prefix-tuning", "bitfit", "adapter", "ia3")
"""Tuners that may tune the text tower only (``tower="text"``): their head is the tuned class weights."""

NOT_FOLDABLE: dict[str, str] = {
    "cocoop": ("its meta-net makes the prompts depend on each image, so the text tower would have to run for "
               "every image and class: there are no fixed text weights to fold"),
    "lst": ("its side network reads every block's output through hooks on the frozen tower; no rule yet writes "
            "that ladder as a graph"),
    "head2toe": ("its head reads pooled outputs of every block through hooks on the frozen tower; no rule yet "
                 "writes that selection as a graph"),
}
"""Method name -> why it cannot be exported (the one line the exporter raises)."""
