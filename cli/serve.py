"""``vlkit serve RUN``: the HTTP service and web page over a run (thin over :mod:`vlkit.apps.serve`).

FastAPI and uvicorn come with the ``serve`` extra and are imported only when the command
runs, so ``vlkit --help`` stays fast and the core install works without them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlkit.cli.common import DeviceOpt, err
from vlkit.errors import VlkitError


def serve_command(
    run: Path = typer.Argument(..., help="A run folder: `vlkit upgrade init` (takes examples) or `vlkit fit --run-dir`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    max_upload_mb: float = typer.Option(16.0, "--max-upload-mb", min=0.001, help="Largest request body, MiB."),
    max_pixels: int = typer.Option(16_000_000, "--max-pixels", min=1, help="Largest image, width x height."),
    max_side: int = typer.Option(8192, "--max-side", min=1, help="Longest image side, pixels."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Most images in one request."),
    max_request_pixels: int = typer.Option(64_000_000, "--max-request-pixels", min=1,
                                           help="Most pixels of all images in one request together."),
    heldout: Optional[str] = typer.Option(None, "--heldout", help="Dataset (offline name or folder) whose test split "
                                          "the page scores after each add, e.g. fashion-mnist-mini."),
    heldout_per_class: int = typer.Option(20, "--heldout-per-class", min=1, help="Held-out test images per class."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log one line per request."),
    device: Optional[str] = DeviceOpt,
) -> None:
    """Serve a run over HTTP: POST /predict, POST /examples, GET /classes, GET /health, a web page at /, docs at /docs."""
    try:
        import uvicorn

        from vlkit.apps.serve.app import create_app
    except ImportError as exc:
        raise VlkitError(f"vlkit serve needs the serve extra ({exc.name} is missing): "
                         "pip install 'vlkit[serve]'") from None
    from vlkit.apps.serve.heldout import HeldOut
    from vlkit.apps.serve.runs import ServedRun
    from vlkit.apps.serve.uploads import Limits

    served = ServedRun(run, device=device)
    sample = HeldOut(served, heldout, heldout_per_class) if heldout else None
    limits = Limits(max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels, max_side=max_side,
                    max_batch=max_batch, max_request_pixels=max_request_pixels)
    app = create_app(served, limits, sample)
    kind = "upgrade run" if served.upgradeable else f"fitted run ({served.method.name})"
    err.print(f"serving {kind} {run} at http://{host}:{port}/ (API docs at /docs; at most {max_batch} images, "
              f"{max_upload_mb:g} MiB a request); Ctrl-C stops", highlight=False, soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log)
