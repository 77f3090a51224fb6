"""vlkit: adapt a frozen CLIP to new image-classification tasks with few labels."""
from vlkit.backbones import Backbone, load_backbone
from vlkit.data import ImageDataset, few_shot, load_image_folder, load_split_file
from vlkit.data.resolve import load_data
from vlkit.errors import DataError, NotFittedError, VlkitError
from vlkit.methods import Method, MethodConfig, create_method, list_methods, method_class, register_method
from vlkit.protocols.fewshot import build_task, run_fewshot
from vlkit.features.store import FeatureStore
from vlkit.methods.task import Task
from vlkit.report.result import Result

__version__ = "0.1.0"
__all__ = ["Backbone", "DataError", "FeatureStore", "ImageDataset", "Method", "MethodConfig", "NotFittedError",
           "Result", "Task", "VlkitError", "build_task", "create_method", "few_shot", "list_methods", "load_backbone",
           "load_data", "load_image_folder", "load_split_file", "method_class", "register_method", "run_fewshot"]
