"""Feature-level adapters trained from the feature store (CLIP-Adapter, ZS-LP/CLAP, LP++)."""
from vlkit.methods.adapters.clip_adapter import ClipAdapter
from vlkit.methods.adapters.lp_plus_plus import LPPlusPlus
from vlkit.methods.adapters.zs_lp import Clap, ZSLinearProbe

__all__ = ["Clap", "ClipAdapter", "LPPlusPlus", "ZSLinearProbe"]
