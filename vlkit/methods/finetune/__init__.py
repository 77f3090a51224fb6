"""Full fine-tuning of the towers, and WiSE-FT's weight-space ensembles of it with zero-shot.

The reference every parameter-efficient method is measured against: every weight of the
image tower (optionally of both towers) is trained, on a :func:`~vlkit.backbones.surgery.shared_copy`
whose trained tensors are copies, so the frozen backbone never changes. The artifact holds
the fine-tuned tensors (the whole tower: its size is reported as it is).
"""
from vlkit.methods.finetune.full_finetune import FullFineTune, FullFineTuneConfig, WiSEFT, WiSEFTConfig

__all__ = ["FullFineTune", "FullFineTuneConfig", "WiSEFT", "WiSEFTConfig"]
