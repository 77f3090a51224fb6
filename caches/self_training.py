"""Self-training cache: training-free domain adaptation of a Tip-Adapter cache.

The classifier is Tip-Adapter's (Zhang et al., ECCV 2022, arXiv:2207.09519, Eq. 6)::

    logits(f) = s * f @ W.T + alpha * exp(-beta * (1 - f @ K.T)) @ L

with s the backbone's logit scale (``task.logit_scale``, as Tip-Adapter's) and the cache
(K, L) first holding the labelled source images and alpha, beta searched on the source
validation split as Tip-Adapter does (vlkit's search, its tie rule included). Self-training then runs R
rounds with no gradient step: round r predicts every target training image with the
current cache (each image's own cache entry left out), keeps in each predicted class the
``p_r`` most confident fraction (softmax probability of the prediction, at least one per
non-empty class, at most the class's balanced share ``round(p_r * N_t / C)``; optionally
only above ``min_confidence``), and rebuilds the target part
of the cache from those pseudo-labels. The portion grows linearly from ``portion[0]`` to
``portion[1]`` over the rounds: class-balanced self-training with a growing portion is
CBST (Zou et al., "Unsupervised Domain Adaptation for Semantic Segmentation via
Class-Balanced Self-Training", ECCV 2018, Sec. 3-4: per-class confidence thresholds at the
top-p portion, p grown over rounds); filling a Tip-Adapter-style cache with confident
pseudo-labelled target features instead of training on them is TDA's positive cache
(Karmanov et al., "Efficient Test-Time Adaptation of Vision-Language Models", CVPR 2024,
Sec. 3.2), here built from the whole unlabelled target set in rounds.

The cap is ours, after TDA's fixed per-class cache capacity: the cache term sums over
entries, so a class the starting predictor over-predicts would otherwise fill the cache and
act as a class prior (vlkit-mini, UCI -> MNIST: 931 of 1,500 pseudo-labels in one of ten
classes, four classes with none; a label-free symptom). ``class_cap=False`` is plain CBST.

Target keys are the mean of each image's cached augmented views (as source keys); queries
use the evaluation view. With ``rounds=0`` the method is Tip-Adapter on the source cache,
exactly. alpha and beta are not re-searched after adding target entries: the only labels
to search on are the source's, whose queries barely meet target keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlkit.caches.common import cache_keys, one_hot
from vlkit.caches.tip_adapter import TipAdapter, TipAdapterConfig
from vlkit.errors import VlkitError
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task


def class_balanced_selection(probs: torch.Tensor, portion: float, min_confidence: float = 0.0,
                             cap: int | None = None) -> torch.Tensor:
    """Indices (P,) of the top ``portion`` most confident rows of each predicted class.

    probs (N, C) class probabilities; a class predicted n_c times keeps ``max(1, round(portion * n_c))``
    rows, at most ``cap`` (ties: lower index first), then rows below ``min_confidence`` are dropped.
    """
    confidence, pred = probs.max(dim=-1)  # (N,), (N,)
    keep = []
    for c in pred.unique().tolist():
        rows = (pred == c).nonzero().flatten()  # ascending indices
        k = max(1, int(round(portion * len(rows))))
        k = k if cap is None else min(k, cap)
        order = torch.sort(confidence[rows], descending=True, stable=True).indices[:k]
        keep.append(rows[order])
    chosen = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)
    chosen = chosen[confidence[chosen] >= min_confidence]
    return chosen.sort().values


@dataclass
class SelfTrainingCacheConfig(TipAdapterConfig):
    """``rounds`` R (0: Tip-Adapter); ``portion`` (first, last) fraction of each predicted class
    kept; ``min_confidence`` an optional probability threshold on top of the portion;
    ``class_cap`` caps each class at its balanced share, ``round(p_r * N_t / C)`` (False: CBST's
    uncapped portions)."""

    rounds: int = 3
    portion: tuple[float, float] = (0.2, 0.5)
    min_confidence: float = 0.0
    class_cap: bool = True

    def validate(self) -> None:
        super().validate()
        self.check(self.rounds >= 0, f"rounds must be >= 0, got {self.rounds}")
        self.check(len(self.portion) == 2 and all(0 < p <= 1 for p in self.portion),
                   f"portion must be two fractions in (0, 1], got {self.portion}")
        self.check(0 <= self.min_confidence <= 1, f"min_confidence must be in [0, 1], got {self.min_confidence}")

    def portion_at(self, r: int) -> float:
        """Portion of round r (1-based): linear from portion[0] to portion[1]."""
        first, last = self.portion
        return first if self.rounds <= 1 else first + (last - first) * (r - 1) / (self.rounds - 1)


@register_method
class SelfTrainingCache(TipAdapter):
    """Tip-Adapter over the source, grown with class-balanced target pseudo-labels over rounds.

    Learned attributes as Tip-Adapter's plus ``pseudo_labels_`` = (indices (P,) into the
    target training set, labels (P,)) of the final round, and ``rounds_`` (per-round
    counts and agreement with the previous round).
    """

    name = "self-training-cache"
    paper = ("Tip-Adapter cache (Zhang et al., ECCV 2022, Eq. 6) + class-balanced self-training "
             "(Zou et al., CBST, ECCV 2018); training-free, cf. TDA (Karmanov et al., CVPR 2024)")
    Config = SelfTrainingCacheConfig
    task_kind = "adaptation"

    def _fit(self, task: Task) -> None:
        if task.unlabeled_features is None:
            raise VlkitError("self-training-cache adapts to an unlabelled target domain: build the task with "
                             "vlkit.protocols.adaptation.build_adaptation_task (task.unlabeled_features is missing)")
        super()._fit(task)  # source cache, alpha/beta on source validation
        views = task.extras.get("target_views")
        views = views if views is not None else task.unlabeled_features[:, None]  # (Nt, 1 + V, D)
        queries = F.normalize(views[:, 0].float(), dim=-1)  # (Nt, D) evaluation view
        keys = cache_keys(views.float())  # (Nt, D)
        c = len(self.classnames_)
        base = self._logits(queries)  # (Nt, C): zero-shot + source cache
        affinity = torch.exp(-self.beta_ * (1 - queries @ keys.T))  # (Nt, Nt)
        affinity.fill_diagonal_(0.0)  # leave each image's own entry out when re-predicting it
        logits, chosen, labels = base, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        history, previous = [], None
        for r in range(1, self.config.rounds + 1):
            pred = logits.argmax(dim=-1)  # (Nt,)
            portion = self.config.portion_at(r)
            cap = max(1, int(round(portion * len(queries) / c))) if self.config.class_cap else None
            chosen = class_balanced_selection(logits.softmax(dim=-1), portion, self.config.min_confidence, cap)
            labels = pred[chosen]
            history.append({"round": r, "portion": portion, "pseudo_labels": int(len(chosen)),
                            "changed": None if previous is None else int((pred != previous).sum())})
            previous = pred
            logits = base + self.alpha_ * affinity[:, chosen] @ one_hot(labels, c)  # (Nt, C)
        self.pseudo_labels_ = (chosen, labels)
        if len(chosen):
            self.add(views[chosen], labels)
        self.fit_info_ = {**self.fit_info_, "rounds": history, "cache_size": self.cache_size}
