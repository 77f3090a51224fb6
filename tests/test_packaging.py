"""Every folder with an __init__.py is listed in pyproject's packages (or a wheel would miss it)."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = {v: k for k, v in config["package-dir"].items()}
    found = set()
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        top = rel.parts[0]
        if top not in mapping:
            continue
        found.add(".".join([mapping[top], *rel.parts[1:]]))
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"
