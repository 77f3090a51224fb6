"""Datasets: ImageFolder trees, CoOp split files, benchmark registries, few-shot splits."""
from vlkit.data.dataset import ImageDataset, drop_unreadable, open_image
from vlkit.data.fewshot import FewShotSplit, few_shot, first_per_class
from vlkit.data.loaders import load_image_folder, load_split_file

__all__ = ["FewShotSplit", "ImageDataset", "drop_unreadable", "few_shot", "first_per_class", "load_image_folder",
           "load_split_file", "open_image"]
