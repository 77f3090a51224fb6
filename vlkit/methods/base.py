"""The method protocol (DESIGN.md, Method): config dataclass, fit, logits, save/load.

A method is also a scikit-learn classifier: ``__init__`` stores arguments only,
``get_params``/``set_params`` run over the config's fields (plus ``text_weights``), so
``sklearn.base.clone``, ``GridSearchCV`` and ``cross_val_score`` take a feature-level
method on plain arrays; learned attributes (ending in ``_``) exist only after ``fit``.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import json
import numbers
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.base import BaseEstimator, ClassifierMixin

from vlkit.errors import BackboneMismatchError, NotFittedError, ShapeError, VlkitError
from vlkit.io import atomic_dir, read_json
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


class Method(ClassifierMixin, BaseEstimator):
    """Base class: a registered name, a config, ``fit(task) -> self``, ``logits(x)``.

    Subclasses implement ``_fit(task)``, ``_logits(x)``, ``state()`` (the learned
    tensors to save) and ``restore(state, meta, backbone)``. ``input_kind`` is
    "features" (x are (N, D) image features from the store) or "images" (x are
    (N, 3, H, W) preprocessed images: the method changes the image tower).

    scikit-learn contract: the parameters are the config's fields plus ``text_weights``
    ((C, D) zero-shot classifier used by ``fit(X, y)`` when fit is given none: the
    carrier for GridSearchCV, which passes only X and y). ``predict``/``predict_proba``/
    ``decision_function`` give numpy for array inputs and tensors for tensor inputs.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    input_kind: ClassVar[str] = "features"
    uses_backbone: ClassVar[bool] = False  # needs the backbone at fit and load time
    task_kind: ClassVar[str] = "fewshot"  # "fewshot", or "adaptation" (needs an unlabelled target)
    # Reads the image tower's per-layer features: the protocol puts them from the store in
    # task.extras["layer_features"] (vlkit.protocols.fewshot.with_method_images).
    needs_layer_features: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | None = None, *, text_weights: Any = None, **overrides: Any) -> None:
        base = config if config is not None else self.Config()
        names = [f.name for f in dataclasses.fields(base)]
        unknown = set(overrides) - set(names)
        if unknown:
            raise VlkitError(f"{self.name}: unknown option(s) {sorted(unknown)}; options are: "
                             f"{', '.join(names + ['text_weights'])}")
        for name, value in overrides.items():
            check_option_type(type(base), name, value, self.name)
        self.config = dataclasses.replace(base, **overrides)
        self.config.validate()
        self.text_weights = text_weights  # stored as given (sklearn.base.clone checks identity)

    @classmethod
    def accepts_arrays(cls) -> bool:
        """Whether ``fit(features, labels, text_weights)`` works on plain arrays: a few-shot
        method on image features that never runs the encoder (a feature-level method)."""
        return cls.input_kind == "features" and not cls.uses_backbone and cls.task_kind == "fewshot"

    # ---- the protocol -----------------------------------------------------------------
    def fit(self, task: Task | Any, labels: Any = None, text_weights: Any = None,
            val_features: Any = None, val_labels: Any = None) -> "Method":
        """Fit on a Task, or sklearn style on arrays: ``fit(features, labels, text_weights)``.

        Array inputs: features (N, D) or (N, V, D), labels (N,) class indices, text weights
        (C, D) (the argument, else the ``text_weights`` parameter), optional validation
        features (M, D) and labels (M,) for the methods that select on validation.
        """
        if not isinstance(task, Task):
            weights = text_weights if text_weights is not None else self.text_weights
            if weights is None:
                raise ShapeError(f"{self.name} needs the (C, D) text weights to fit on arrays: "
                                 "fit(features, labels, text_weights) or set the text_weights parameter")
            task = Task.from_arrays(task, labels, weights, val_features, val_labels)
        if self.uses_backbone and task.backbone is None:
            raise VlkitError(f"{self.name} runs the encoder: build the task with a backbone (vlkit.build_task)")
        self.classnames_ = list(task.classnames)
        self.dim_ = task.dim
        self.fit_info_: dict[str, Any] = {}
        try:
            self._fit(task)
        except BaseException:
            self._forget_fit()  # a failed fit leaves the method unfitted, not half-fitted
            raise
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

    def decision_function(self, x: Any) -> torch.Tensor | np.ndarray:
        """(N, C) logits; numpy for array inputs, a tensor for tensor inputs."""
        return _like(x, self.logits(x))

    def predict(self, x: Any) -> torch.Tensor | np.ndarray:
        """(N,) predicted class indices; numpy for array inputs, a tensor for tensor inputs."""
        return _like(x, self.logits(x).argmax(dim=-1))

    def predict_proba(self, x: Any) -> torch.Tensor | np.ndarray:
        """(N, C) softmax probabilities; numpy for array inputs, a tensor for tensor inputs."""
        return _like(x, self.logits(x).softmax(dim=-1))

    def score(self, x: Any, y: Any, sample_weight: Any = None) -> float:
        """Accuracy of ``predict(x)`` against class indices ``y`` (N,), in [0, 1] (sklearn's ``score``)."""
        pred = np.asarray(_numpy(self.predict(x))).reshape(-1)  # (N,)
        truth = np.asarray(_numpy(y)).reshape(-1)
        if truth.shape != pred.shape:
            raise ShapeError(f"labels must be ({len(pred)},) for {len(pred)} inputs, got {truth.shape}")
        return float(np.average(pred == truth, weights=None if sample_weight is None else _numpy(sample_weight)))

    # ---- the scikit-learn parameters ----------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The config's fields and ``text_weights``, as stored (``deep`` changes nothing: no sub-estimators)."""
        params = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}
        params["text_weights"] = self.text_weights
        return params

    def set_params(self, **params: Any) -> "Method":
        """Replace config fields and/or ``text_weights``; returns self. The values go through the
        constructor (validated, and anything a subclass derives from the config is rederived)."""
        fresh = type(self)(**{**self.get_params(deep=False), **params})  # raises before changing self
        vars(self).update(vars(fresh))
        return self

    def __repr__(self) -> str:
        default = dataclasses.asdict(self.Config())
        shown = [f"{k}={v!r}" for k, v in dataclasses.asdict(self.config).items() if default.get(k, k) != v]
        if self.text_weights is not None:
            shown.append(f"text_weights=<{tuple(np.shape(self.text_weights))} weights>")
        return f"{type(self).__name__}({', '.join(shown)})"

    # ---- fitted state -------------------------------------------------------------------
    def __sklearn_is_fitted__(self) -> bool:
        """Whether ``fit`` (or ``load``) has run: ``sklearn.utils.validation.check_is_fitted`` asks this."""
        return "classnames_" in self.__dict__

    def __getattr__(self, attr: str) -> Any:
        # Runs only when normal lookup fails: a learned attribute (or a property reading one)
        # asked for before fit is a NotFittedError (an AttributeError, so hasattr stays False).
        public = not attr.startswith("_")
        if public and not self.__sklearn_is_fitted__() and (attr.endswith("_") or hasattr(type(self), attr)):
            raise NotFittedError(f"{self.name} is not fitted yet: {attr} is learned by fit(...); call fit first")
        if public and hasattr(type(self), attr):  # a fitted property failed inside: show its own error
            return object.__getattribute__(self, attr)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    def _forget_fit(self) -> None:
        """Drop every learned attribute (public names ending in ``_``)."""
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("_")]:
            delattr(self, attr)

    @property
    def classes_(self) -> np.ndarray:
        """(C,) the class indices 0..C-1 (sklearn's ``classes_``; labels are class indices)."""
        return np.arange(len(self.classnames_))

    @property
    def n_features_in_(self) -> int:
        """D, the feature width seen at fit (sklearn's ``n_features_in_``)."""
        return self.dim_

    @property
    def trainable_parameters(self) -> int:
        """How many numbers training changes (0 for training-free methods)."""
        return 0

    @classmethod
    def count_parameters(cls, num_classes: int, dim: int) -> int | None:
        """Trainable parameters for a task of ``num_classes`` x ``dim``-d features, if known
        without fitting (``vlkit methods`` shows it); None when it depends on the encoder."""
        return None

    def images_to_encode(self) -> dict[str, Any]:
        """Image sets the method needs as features beyond the task's own: ``{extras key: ImageDataset}``.

        A method never opens a feature store: the caller (a protocol) encodes each dataset
        with its store and puts ``(dataset, features (n, D))`` in ``task.extras[key]``
        before ``fit`` (``vlkit.protocols.fewshot.with_method_images``). Default: none.
        """
        return {}

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
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(f"{self.name} is not fitted yet: call fit(...) before logits/predict/save")

    def save(self, directory: str | Path, backbone_fingerprint: str | None = None) -> Path:
        """Write ``config.json`` + ``state.safetensors`` atomically (:func:`vlkit.io.atomic_dir`)."""
        self._check_fitted()
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            header = {"method": self.name, "config": dataclasses.asdict(self.config), "meta": self.meta(),
                      "backbone": backbone_fingerprint, "format": 1}
            (tmp / "config.json").write_text(json.dumps(header, indent=1, default=str))
            state = {k: v.detach().cpu().contiguous() for k, v in self.state().items()}
            save_file(state, str(tmp / "state.safetensors"))
        return directory

    @classmethod
    def load(cls, directory: str | Path, backbone: Any = None, *, fix: str | None = None) -> "Method":
        """Load a saved method; checks it was fitted with the same backbone.

        A damaged folder (config.json not JSON or not vlkit's, an option the method lacks, a
        truncated or foreign state.safetensors) is a one-line VlkitError naming the file;
        ``fix`` is the remedy it ends with (default: fit and save the method again).
        """
        from vlkit.methods.registry import method_class

        directory = Path(directory)
        config_file, state_file = directory / "config.json", directory / "state.safetensors"
        if not config_file.is_file() or not state_file.is_file():
            raise VlkitError(f"{directory} is not a saved vlkit method (needs config.json and state.safetensors)")
        fix = fix or "the saved method is damaged; fit and save it again (e.g. `vlkit fit ... --run-dir`)"
        header = read_json(config_file, "method config", fix)
        if not isinstance(header, dict) or not isinstance(header.get("config"), dict) \
                or not isinstance(header.get("meta"), dict) or not isinstance(header.get("method"), str):
            raise VlkitError(f"{config_file} lacks the method, config and meta entries vlkit saves: {fix}")
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
        fields = {f.name for f in dataclasses.fields(klass.Config)}
        unknown = sorted(set(header["config"]) - fields)
        if unknown:
            raise VlkitError(f"{config_file} sets option(s) {unknown} that {klass.name} does not have "
                             f"(saved by another vlkit version, or edited): {fix}")
        try:
            method = klass(**header["config"])
        except VlkitError as exc:
            raise VlkitError(f"{config_file}: {exc}") from None
        meta = header["meta"]
        if not isinstance(meta.get("classnames"), list) or not isinstance(meta.get("dim"), int):
            raise VlkitError(f"{config_file} lacks the class names and feature width of the fit: {fix}")
        method.classnames_ = meta["classnames"]
        method.dim_ = meta["dim"]
        method.fit_info_ = meta.get("fit_info", {})
        try:
            state = load_file(str(state_file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError, or OSError
            raise VlkitError(f"{state_file} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0]}): "
                             f"{fix}") from None
        try:
            method.restore(state, meta, backbone)
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
            method._forget_fit()
            raise VlkitError(f"{state_file} does not hold the state {klass.name} saved "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): {fix}") from None
        return method


def _type_matches(value: Any, expected: Any) -> bool:
    """Whether ``value`` fits the annotation ``expected`` (unknown annotations accept anything).

    int takes any integral number but not a bool; float takes any real number but not a bool;
    a tuple or list annotation takes a tuple or a list (JSON has only lists)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any or isinstance(expected, (str, typing.TypeVar)):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, (bool, np.bool_))
    if expected is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if expected is float:
        return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if expected is str:
        return isinstance(value, str)
    if origin in (tuple, list, collections.abc.Sequence) or expected in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        items = [a for a in args if a is not Ellipsis]
        if origin is tuple and args and Ellipsis not in args:
            return len(value) == len(args) and all(_type_matches(v, a) for v, a in zip(value, args))
        return not items or all(_type_matches(v, items[0]) for v in value)
    if origin is dict or expected is dict:
        return isinstance(value, dict)
    return True


def _type_name(expected: Any) -> str:
    """'float', 'float or None', 'one of a, b' for an annotation."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if expected is type(None):
        return "None"
    if origin in (tuple, list):
        return "a list"
    return getattr(expected, "__name__", str(expected))


def check_option_type(config_class: type, name: str, value: Any, owner: str = "") -> None:
    """Raise a one-line VlkitError unless ``value`` fits the type of ``config_class``'s field ``name``.

    Unknown field names are left to the caller (the constructor lists the options).
    """
    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is not checked
        return
    if name in hints and not _type_matches(value, hints[name]):
        raise VlkitError(f"{owner + ': ' if owner else ''}option {name} takes {_type_name(hints[name])}, "
                         f"got {value!r}")


def _numpy(x: Any) -> np.ndarray:
    """A tensor or array-like as a numpy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _like(x: Any, out: torch.Tensor) -> torch.Tensor | np.ndarray:
    """``out`` as a tensor when the input ``x`` was one, else as a numpy array (sklearn style)."""
    return out if isinstance(x, torch.Tensor) else out.cpu().numpy()
