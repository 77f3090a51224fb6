"""Parameter-efficient tuners injected into the towers (LoRA, prefix, VPT, BitFit, adapters, IA3).

Every tuner works on its own :func:`~vlkit.tuners.inject.shared_copy` of the frozen
open_clip model (module tree copied, weights shared), so the backbone is never changed.
"""
from vlkit.tuners.base import TunerConfig, TunerMethod
from vlkit.tuners.method import IA3, LoRA, Adapter, BitFit, PrefixTuning, VPTDeep, VPTShallow
from vlkit.tuners.model import TunedCLIP

__all__ = ["IA3", "Adapter", "BitFit", "LoRA", "PrefixTuning", "TunedCLIP", "TunerConfig", "TunerMethod",
           "VPTDeep", "VPTShallow"]
