"""Small configs so every registered method fits in seconds in the contract matrix.

Each method family keeps its entries in its own file ``tests/contract_overrides_<family>.py``
defining ``OVERRIDES = {"method-name": {"epochs": 2, ...}}``; they are merged here.
"""
from __future__ import annotations

import importlib
from pathlib import Path

CONTRACT_OVERRIDES: dict[str, dict] = {}
for _file in sorted(Path(__file__).parent.glob("contract_overrides_*.py")):
    CONTRACT_OVERRIDES.update(importlib.import_module(_file.stem).OVERRIDES)
