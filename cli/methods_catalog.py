"""``vlkit methods`` without importing torch: a catalog of the registry, written from it.

Importing the registry imports every method family, and with them torch, open_clip and
scikit-learn (seconds). The listing only needs each method's name, family, input kind,
paper and parameter count, so ``methods_catalog.json`` (next to this file) holds them,
with each count as the bilinear form ``cd*C*D + c*C + d*D + one`` in the classes C and
the feature width D that the method's ``count_parameters`` computes. The test suite
checks the catalog against the live registry; regenerate it with
``python -m vlkit.cli.methods_catalog`` after adding a method.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

CATALOG_FILE = Path(__file__).with_name("methods_catalog.json")

# offline models' feature widths (checked against the backbones in tests/test_cli_startup.py)
OFFLINE_DIMS = {"vlkit-mini": 384, "test-tiny": 32}

_FIT_POINTS = [(2, 3), (5, 3), (2, 7), (5, 7)]
_CHECK_POINTS = [(10, 384), (100, 512), (37, 1024)]


def _bilinear(count: Any) -> dict[str, int] | None:
    """Coefficients of ``count(C, D)`` as ``cd*C*D + c*C + d*D + one``; None when it is not a number."""
    values = [count(c, d) for c, d in _FIT_POINTS]
    if any(v is None for v in values):
        return None
    (v23, v53, v27, v57) = values  # four points determine a bilinear form exactly
    cd = (v57 - v27 - v53 + v23) // ((5 - 2) * (7 - 3))
    c = (v53 - v23) // 3 - cd * 3
    d = (v27 - v23) // 4 - cd * 2
    one = v23 - cd * 6 - c * 2 - d * 3
    form = {"cd": cd, "c": c, "d": d, "one": one}
    for classes, dim in _FIT_POINTS + _CHECK_POINTS:
        if parameters(form, classes, dim) != count(classes, dim):
            raise ValueError(f"{count} is not bilinear in (classes, dim); the catalog cannot hold it")
    return form


def parameters(form: dict[str, int] | None, classes: int, dim: int) -> int | None:
    """The parameter count of a catalog entry for ``classes`` x ``dim``-d features."""
    if form is None:
        return None
    return form["cd"] * classes * dim + form["c"] * classes + form["d"] * dim + form["one"]


def build_catalog() -> list[dict[str, Any]]:
    """The catalog from the live registry (imports every method family)."""
    from vlkit.methods import list_methods, method_class

    rows = []
    for name in list_methods():
        klass = method_class(name)
        rows.append({"name": name, "family": klass.family, "input": klass.input_kind, "paper": klass.paper,
                     "parameters": _bilinear(klass.count_parameters)})
    return rows


def read_catalog() -> list[dict[str, Any]]:
    """The stored catalog (no heavy imports)."""
    return json.loads(CATALOG_FILE.read_text())


def feature_dim(model: str, pretrained: str | None = None, device: str | None = None) -> int:
    """The image-feature width of ``model``: known offline models and open_clip configs are read
    without loading anything; anything else (a checkpoint file) is loaded."""
    if model in OFFLINE_DIMS:
        return OFFLINE_DIMS[model]
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        config = Path(folder) / "model_configs" / f"{model}.json"
        if config.is_file():
            return int(json.loads(config.read_text())["embed_dim"])
    from vlkit.backbones import load_backbone

    return load_backbone(model, pretrained, device).embed_dim


def methods_rows(classes: int, dim: int) -> list[dict[str, Any]]:
    """Rows for ``vlkit methods``: name, family, input, trainable parameters, paper."""
    return [{"name": row["name"], "family": row["family"], "input": row["input"],
             "trainable_parameters": parameters(row["parameters"], classes, dim), "paper": row["paper"]}
            for row in read_catalog()]


if __name__ == "__main__":
    CATALOG_FILE.write_text(json.dumps(build_catalog(), indent=1) + "\n")
    print(f"wrote {CATALOG_FILE}")
