"""What ``vlkit datasets`` lists: offline datasets (built or not) and benchmark datasets."""
from __future__ import annotations

from typing import Any


def dataset_catalog() -> list[dict[str, Any]]:
    """One row per dataset: name, kind, status, description."""
    from vlkit.data.offline import OFFLINE_DATASETS, VENDORED_DATASETS
    from vlkit.data.offline.paths import datasets_root
    from vlkit.data.offline.arrays import is_built

    rows = [{"name": n, "kind": "vendored", "status": "ready", "description": d["description"]}
            for n, d in VENDORED_DATASETS.items()]
    rows += [{"name": n, "kind": "offline", "status": "built" if is_built(datasets_root() / n) else "not built "
              f"(vlkit datasets build {n})", "description": d["description"]} for n, d in OFFLINE_DATASETS.items()]
    from vlkit.data.coop_suite import BENCHMARKS
    rows += [{"name": n, "kind": "benchmark", "status": "bring your own (CoOp layout)",
              "description": f"{len(b.classnames or [])} classes; template {b.coop_template!r}"}
             for n, b in BENCHMARKS.items()]
    return rows
