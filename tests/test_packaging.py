"""Packaging: every package folder is listed (or a wheel would miss it); dependencies are where they belong."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
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


def _requirement_names(requirements: list[str]) -> set[str]:
    """Normalised distribution names of PEP 508 requirement strings."""
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", r).group()).lower() for r in requirements}


# Code that runs only with an extra installed, and may import what that extra provides.
EXTRA_CODE = {"serve": (ROOT / "vlkit" / "apps" / "serve", ROOT / "cli" / "serve.py")}


def _library_imports(only: tuple[Path, ...] = (), skip: tuple[Path, ...] = ()) -> set[str]:
    """Top-level third-party modules the library's source imports (module level or inside functions);
    ``only``/``skip``: files under these paths alone / left out."""
    found = set()
    for folder in ("vlkit", "prompts", "caches", "cli"):
        for path in (ROOT / folder).rglob("*.py"):
            inside = any(path == root or root in path.parents for root in (only or skip))
            if inside != bool(only):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "vlkit"}


# modules imported only inside the feature that needs them, with the extra that brings them
OPTIONAL_IMPORTS = {"onnx": "export", "onnxruntime": "export",  # vlkit export --format onnx
                    "ray": "ray",  # --engine ray (vlkit.features.ray_engine)
                    "webdataset": "shards"}  # --data given as WebDataset shards


def test_the_core_install_has_what_the_library_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _requirement_names(project["dependencies"])
    providers = importlib.metadata.packages_distributions()
    for module, extra in OPTIONAL_IMPORTS.items():
        assert module in _requirement_names(project["optional-dependencies"][extra])
    extra_code = tuple(path for paths in EXTRA_CODE.values() for path in paths)
    missing = {m: providers.get(m, ["?"]) for m in _library_imports(skip=extra_code) - set(OPTIONAL_IMPORTS)
               if not _requirement_names(providers.get(m, [])) & core}
    assert not missing, f"the library imports these, but no core dependency provides them: {missing}"
    for extra, paths in EXTRA_CODE.items():
        allowed = core | _requirement_names(project["optional-dependencies"][extra])
        missing = {m: providers.get(m, ["?"]) for m in _library_imports(only=paths)
                   if not _requirement_names(providers.get(m, [])) & allowed}
        assert not missing, f"the {extra} code imports these, but neither the core nor [{extra}] provides them: {missing}"


def test_extras_hold_what_only_builders_and_tests_need_and_the_readme_installs_them():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: _requirement_names(reqs) for name, reqs in project["optional-dependencies"].items()}
    assert "mlxtend" in extras["datasets"] and "mlxtend" not in _requirement_names(project["dependencies"])
    assert {"pytest", "pytest-timeout"} <= extras["test"]
    readme = (ROOT / "README.md").read_text()
    test_command = readme.split("<!-- ci: test command -->", 1)[1].split("\n")[2]  # what .ci/run executes
    assert 'pip install ".[datasets,test,export]"' in test_command and test_command.endswith("pytest")
    assert "pip install . && vlkit fewshot" in readme  # the main job needs the core install only
