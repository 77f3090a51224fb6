"""Datasets: ImageFolder trees, CoOp split files, benchmark registries, few-shot splits."""
from vlkit.data.dataset import ImageDataset, MissingSplitError, drop_unreadable, open_image
from vlkit.data.fewshot import (DEFAULT_VAL_PER_CLASS, VAL_MODES, FewShotSplit, check_val_options, choose_validation,
                                few_shot, first_per_class)
from vlkit.data.loaders import load_image_folder, load_split_file

__all__ = ["DEFAULT_VAL_PER_CLASS", "FewShotSplit", "ImageDataset", "MissingSplitError", "VAL_MODES",
           "check_val_options", "choose_validation", "drop_unreadable", "few_shot", "first_per_class",
           "load_image_folder", "load_split_file", "open_image"]
