"""The method protocol (DESIGN.md, Method): config dataclass, fit, logits, save/load."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from vlkit.errors import BackboneMismatchError, NotFittedError, ShapeError, VlkitError
from vlkit.methods.task import Task, as_tensor


@dataclasses.dataclass
class MethodConfig:
    """Base config; subclasses add fields and range checks in ``validate``.

    ``quick`` holds the options of the method's quick schedule (``vlkit fewshot``, ``vlkit bench
    --schedule quick``): ``{}`` runs the paper's schedule, which the cache models, probes and
    feature adapters do (they take seconds). Methods that run an encoder tower at every step
    override it with a short schedule; every result records the options it ran with.
    """

    quick: ClassVar[dict[str, Any]] = {}

    def validate(self) -> None:
        """Raise VlkitError for out-of-range values (subclasses extend)."""

    @staticmethod
    def check(ok: bool, message: str) -> None:
        """Raise a VlkitError with ``message`` unless ``ok``."""
        if not ok:
            raise VlkitError(message)


class Method:
    """Base class: a registered name, a config, ``fit(task) -> self``, ``logits(x)``.

    Subclasses implement ``_fit(task)``, ``_logits(x)``, ``state()`` (the learned
    tensors to save) and ``restore(state, meta, backbone)``. ``input_kind`` is
    "features" (x are (N, D) image features from the store) or "images" (x are
    (N, 3, H, W) preprocessed images: the method changes the image tower).
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    input_kind: ClassVar[str] = "features"
    uses_backbone: ClassVar[bool] = False  # needs the backbone at fit and load time
    task_kind: ClassVar[str] = "fewshot"  # "fewshot", or "adaptation" (needs an unlabelled target)

    def __init__(self, config: MethodConfig | None = None, **overrides: Any) -> None:
        base = config if config is not None else self.Config()
        unknown = set(overrides) - {f.name for f in dataclasses.fields(base)}
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(base))
            raise VlkitError(f"{self.name}: unknown option(s) {sorted(unknown)}; options are: {known}")
        self.config = dataclasses.replace(base, **overrides)
        self.config.validate()
        self.classnames_: list[str] | None = None
        self.fit_info_: dict[str, Any] = {}

    # ---- the protocol -----------------------------------------------------------------
    def fit(self, task: Task | Any, labels: Any = None, text_weights: Any = None,
            val_features: Any = None, val_labels: Any = None) -> "Method":
        """Fit on a Task, or sklearn style on arrays: ``fit(features, labels, text_weights)``."""
        if not isinstance(task, Task):
            task = Task.from_arrays(task, labels, text_weights, val_features, val_labels)
        if self.uses_backbone and task.backbone is None:
            raise VlkitError(f"{self.name} runs the encoder: build the task with a backbone (vlkit.build_task)")
        self.classnames_ = list(task.classnames)
        self.dim_ = task.dim
        self._fit(task)
        return self

    def logits(self, x: Any) -> torch.Tensor:
        """(N, D) features (or (N, 3, H, W) images for image-tower methods) -> (N, C) logits."""
        self._check_fitted()
        if self.input_kind == "features":
            x = as_tensor(x, "features", (2,))
            if x.shape[1] != self.dim_:
                raise ShapeError(
                    f"{self.name} was fitted on {self.dim_}-d features, got {x.shape[1]}-d: "
                    "features from another backbone? re-extract them with the fitted model"
                )
        with torch.no_grad():
            return self._logits(x)

    def predict(self, x: Any) -> torch.Tensor:
        """(N,) predicted class indices."""
        return self.logits(x).argmax(dim=-1)

    def predict_proba(self, x: Any) -> torch.Tensor:
        """(N, C) softmax probabilities."""
        return self.logits(x).softmax(dim=-1)

    @property
    def trainable_parameters(self) -> int:
        """How many numbers training changes (0 for training-free methods)."""
        return 0

    @classmethod
    def count_parameters(cls, num_classes: int, dim: int) -> int | None:
        """Trainable parameters for a task of ``num_classes`` x ``dim``-d features, if known
        without fitting (``vlkit methods`` shows it); None when it depends on the encoder."""
        return None

    # ---- to implement -------------------------------------------------------------------
    def _fit(self, task: Task) -> None:
        raise NotImplementedError

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        """The learned tensors to save (never encoder weights)."""
        raise NotImplementedError

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone: Any) -> None:
        """Rebuild a fitted method from ``state`` (and the backbone where needed)."""
        raise NotImplementedError

    def meta(self) -> dict:
        """Extra JSON saved with the state (class names, fit info)."""
        return {"classnames": self.classnames_, "dim": self.dim_, "fit_info": self.fit_info_}

    # ---- helpers ------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.classnames_ is None:
            raise NotFittedError(f"{self.name} is not fitted yet: call fit(...) before logits/predict/save")

    def save(self, directory: str | Path, backbone_fingerprint: str | None = None) -> Path:
        """Write ``config.json`` + ``state.safetensors`` atomically (temp folder, then rename)."""
        self._check_fitted()
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
        try:
            header = {"method": self.name, "config": dataclasses.asdict(self.config), "meta": self.meta(),
                      "backbone": backbone_fingerprint, "format": 1}
            (tmp / "config.json").write_text(json.dumps(header, indent=1, default=str))
            state = {k: v.detach().cpu().contiguous() for k, v in self.state().items()}
            save_file(state, str(tmp / "state.safetensors"))
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: str | Path, backbone: Any = None) -> "Method":
        """Load a saved method; checks it was fitted with the same backbone."""
        from vlkit.methods.registry import method_class

        directory = Path(directory)
        config_file, state_file = directory / "config.json", directory / "state.safetensors"
        if not config_file.is_file() or not state_file.is_file():
            raise VlkitError(f"{directory} is not a saved vlkit method (needs config.json and state.safetensors)")
        header = json.loads(config_file.read_text())
        klass = method_class(header["method"])
        if cls is not Method and klass is not cls:
            raise VlkitError(f"{directory} holds {header['method']}, not {cls.name}")
        saved_fp = header.get("backbone")
        if backbone is not None and saved_fp and saved_fp != backbone.fingerprint:
            raise BackboneMismatchError(
                f"{directory} was fitted with backbone {saved_fp}, not {backbone.fingerprint}: load it with that model"
            )
        if klass.uses_backbone and backbone is None:
            raise VlkitError(f"{klass.name} needs the backbone it was fitted with: load(dir, backbone)")
        method = klass(klass.Config(**header["config"]))
        meta = header["meta"]
        method.classnames_ = meta["classnames"]
        method.dim_ = meta["dim"]
        method.fit_info_ = meta.get("fit_info", {})
        method.restore(load_file(str(state_file)), meta, backbone)
        return method
