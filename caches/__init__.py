"""Training-free cache models on a FAISS index (Tip-Adapter, APE, TIP-X/SuS-X, GDA).

Importing this package registers "tip-adapter", "tip-adapter-f", "ape", "ape-t",
"tip-x" and "gda" with the method registry (in that order).
"""
from vlkit.caches.tip_adapter import TipAdapter  # isort: skip
from vlkit.caches.tip_adapter_f import TipAdapterF  # isort: skip
from vlkit.caches.ape import APE  # isort: skip
from vlkit.caches.ape_t import APET  # isort: skip
from vlkit.caches.tipx import TipX  # isort: skip
from vlkit.caches.gda import GDA  # isort: skip
from vlkit.caches.self_training import SelfTrainingCache  # isort: skip

__all__ = ["APE", "APET", "GDA", "TipAdapter", "TipAdapterF", "TipX"]
