"""The shared training loop: its learning-rate sequences against the schedulers they follow,
and the starting state as a selection candidate."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vlkit.methods.training import TrainConfig, train


def _lrs_seen(cfg: TrainConfig, batches_per_epoch: int) -> list[float]:
    """Run ``train`` on a dummy parameter and record the lr of every optimiser step."""
    param = nn.Parameter(torch.zeros(1))
    seen: list[float] = []

    def record_loss(batch):
        return (param - 1.0).pow(2).sum()

    batches = lambda epoch: range(batches_per_epoch)  # noqa: E731
    original = torch.optim.AdamW.step, torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original[0 if isinstance(self, torch.optim.AdamW) else 1](self, *args, **kwargs)

    torch.optim.AdamW.step, torch.optim.SGD.step = spy, spy
    try:
        train([param], record_loss, batches, cfg)
    finally:
        torch.optim.AdamW.step, torch.optim.SGD.step = original
    return seen


@pytest.mark.parametrize("iters", [1, 3, 7])
def test_per_batch_cosine_is_the_reference_cosine_over_epochs_times_iterations(iters):
    # Tip-Adapter's / APE's code: CosineAnnealingLR(optimizer, epochs * len(loader)), stepped after each batch.
    epochs, lr = 4, 1e-3
    seen = _lrs_seen(TrainConfig(epochs=epochs, lr=lr, optimizer="adamw", step="batch"), iters)
    total = epochs * iters
    reference = [0.5 * lr * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    assert seen == pytest.approx(reference, rel=1e-12)
    # and torch's own scheduler agrees
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    torch_lrs = []
    for _ in range(total):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(torch_lrs, rel=1e-9)


def test_per_epoch_cosine_with_warmup_is_dassls_sequence():
    # Dassl (CoOp): constant warm-up of 1 epoch at 1e-5, then CosineAnnealingLR(T_max=epochs) per epoch,
    # whose own count starts after the warm-up (epoch 1 runs at the full rate).
    epochs, lr, iters = 5, 2e-3, 3
    seen = _lrs_seen(TrainConfig(epochs=epochs, lr=lr, warmup_epochs=1, warmup_lr=1e-5), iters)
    per_epoch = [1e-5] + [0.5 * lr * (1 + math.cos(math.pi * (e - 1) / epochs)) for e in range(1, epochs)]
    assert seen == pytest.approx([x for x in per_epoch for _ in range(iters)], rel=1e-12)


def test_the_starting_state_is_kept_when_training_only_hurts_validation():
    param = nn.Parameter(torch.zeros(1))
    # training pulls the parameter to 1; validation rewards staying at 0
    history = train([param], lambda b: (param - 1.0).pow(2).sum(), lambda e: range(2),
                    TrainConfig(epochs=3, lr=0.1, optimizer="sgd", keep_initial=True),
                    val_score=lambda: -abs(float(param)))
    assert history["best_epoch"] == -1 and float(param) == 0.0
    assert history["initial_val"] == 0.0 and all(v < 0 for v in history["val"])
    param2 = nn.Parameter(torch.zeros(1))
    history = train([param2], lambda b: (param2 - 1.0).pow(2).sum(), lambda e: range(2),
                    TrainConfig(epochs=3, lr=0.1, optimizer="sgd", keep_initial=False),
                    val_score=lambda: -abs(float(param2)))
    assert history["best_epoch"] == 0 and float(param2) != 0.0
