"""What every cell of a bench shares: the backbone, the feature store and the datasets, loaded on first use."""
from __future__ import annotations

from typing import Any

from vlkit.protocols.cells import Cell
from vlkit.protocols.sources import DataSource
from vlkit.report.result import Result


class BenchContext:
    """Loads the backbone and the feature store on first use, so a finished bench loads nothing."""

    def __init__(self, model: str, pretrained: str | None, device: str | None, views: int, store: Any,
                 backbone: Any, sources: dict[str, DataSource]) -> None:
        self.model, self.pretrained, self.device, self.views = model, pretrained, device, views
        self.store, self.backbone, self.sources = store, backbone, sources

    def device_name(self) -> str:
        """The backbone's device if loaded, else the requested one."""
        return str(self.backbone.device) if self.backbone is not None else (self.device or "")

    def prepare(self, cell: Cell) -> None:
        """Load what ``cell`` needs and every cell shares (backbone, store, its dataset's splits)."""
        from vlkit.features.store import FeatureStore

        if self.backbone is None:
            from vlkit.backbones import load_backbone

            self.backbone = load_backbone(self.model, self.pretrained, self.device)
        if self.store is None:
            self.store = FeatureStore()
        for split in ("train", "test"):
            self.sources[cell.data].split(split)
        if cell.validation.get("val") != "from-train":
            self.sources[cell.data].val_split()

    def run(self, proto: Any, cell: Cell) -> Result:
        """Run one cell with the shared backbone and store (after :meth:`prepare`)."""
        return proto.run(self.backbone, self.sources[cell.data], cell.method, cell.shots, cell.seed, self.store,
                         self.views, **cell.validation, **cell.overrides)
