"""vlkit: adapt a frozen CLIP to new image-classification tasks with few labels."""
from vlkit.backbones import Backbone, load_backbone
from vlkit.data import ImageDataset, few_shot, load_image_folder, load_split_file
from vlkit.errors import DataError, NotFittedError, VlkitError

__version__ = "0.1.0"
__all__ = ["Backbone", "DataError", "ImageDataset", "NotFittedError", "VlkitError", "few_shot",
           "load_backbone", "load_image_folder", "load_split_file"]
