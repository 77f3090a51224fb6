"""Frozen CLIP encoders: open_clip models by name and the offline models vlkit ships."""
from vlkit.backbones.backbone import Backbone, default_device, load_backbone
from vlkit.backbones.offline_model import OfflineModel, register_offline_model
from vlkit.backbones.registry import offline_models
from vlkit.backbones.text_tower import TextTower

__all__ = ["Backbone", "OfflineModel", "TextTower", "default_device", "load_backbone", "offline_models",
           "register_offline_model"]
