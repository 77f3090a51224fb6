"""Parameter-efficient tuners injected into the towers (LoRA, prefix, VPT, BitFit, adapters, IA3, TinyTL).

Every tuner works on its own :func:`~vlkit.backbones.surgery.shared_copy` of the frozen
open_clip model (module tree copied, weights shared), so the backbone is never changed.

Why not Hugging Face PEFT: its LoRA targets ``nn.Linear`` and cannot pick q, k or v out
of open_clip's fused ``in_proj_weight`` (its experimental ``nn.MultiheadAttention``
layer adapts the fused matrix as one and merges it on every forward); its prefix tuning
goes through Hugging Face ``past_key_values``, which open_clip's towers do not have;
VPT is not in PEFT; and it edits the model in place, which would change the shared
backbone. Splitting attention into q/k/v/out ``nn.Linear`` views once
(:mod:`vlkit.backbones.attention_views`, through :mod:`vlkit.backbones.surgery`) makes
each tuner a few lines on top.
"""
from vlkit.methods.tuners.base import TunerConfig, TunerMethod
from vlkit.methods.tuners.method import IA3, LoRA, Adapter, BitFit, PrefixTuning, VPTDeep, VPTShallow
from vlkit.methods.tuners.model import TunedCLIP
from vlkit.methods.tuners.tinytl import TinyTL

__all__ = ["IA3", "Adapter", "BitFit", "LoRA", "PrefixTuning", "TinyTL", "TunedCLIP", "TunerConfig",
           "TunerMethod", "VPTDeep", "VPTShallow"]
