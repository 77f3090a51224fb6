"""The FastAPI application over one :class:`~vlkit.apps.serve.runs.ServedRun`.

Routes: ``GET /`` the web page, ``POST /predict``, ``POST /examples``, ``GET /classes``,
``GET /health``, ``GET /heldout`` (+ try-out images) and the API docs at ``/docs`` and ``/redoc``
(served from local assets, :mod:`.docs`: they work offline). Every
refusal is a 4xx with a JSON body ``{"error": "<one line>"}``: 413 over a size limit,
415 not an image, 409 examples for a fitted run, 422 anything else malformed (and 503
when the run cannot be written: the add did not happen). Handlers
are plain functions, which FastAPI runs in its thread pool: several clients at once.
"""
from __future__ import annotations

import time
from importlib import metadata, resources
from typing import Any, Awaitable, Callable, List

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from vlkit.apps.serve.batching import PredictionBatcher
from vlkit.apps.serve.docs import add_offline_docs
from vlkit.apps.serve.heldout import HeldOut
from vlkit.apps.serve.runs import NotUpgradeableError, RunWriteError, ServedRun
from vlkit.apps.serve.uploads import Limits, Refused, decode_images
from vlkit.errors import VlkitError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


class BodyTooLarge(HTTPException):
    """The request body passed the byte limit (raised while the body streams in)."""


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413, before or while it arrives.

    A declared ``Content-Length`` over the limit is refused before reading; a body that
    streams past the limit (chunked, or a lying header) is cut off at the limit. The
    body is never held whole by this layer.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.message = (f"the request body is over this server's limit of {max_bytes / 2**20:.3g} MiB "
                        f"(--max-upload-mb): send fewer or smaller images")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _refusal(413, self.message)(scope, receive, send)
            return
        received, started = 0, False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(413, self.message)
            return message

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await _refusal(413, self.message)(scope, receive, send)


def _version() -> str:
    try:
        return metadata.version("vlkit")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown"


def _page() -> str:
    return (resources.files("vlkit.apps.serve") / "static" / "index.html").read_text(encoding="utf-8")


def _read_images(files: List[UploadFile], limits: Limits) -> tuple[list, list[str]]:
    """Decode every upload (all or nothing); returns the images and the client's names for them."""
    images = decode_images([(upload.file.read(), upload.filename or "") for upload in files], limits)
    return images, [(upload.filename or "")[:200] for upload in files]


def create_app(served: ServedRun, limits: Limits | None = None, heldout: HeldOut | None = None) -> FastAPI:
    """The service over ``served``: limits per request, an optional held-out sample for the page."""
    limits = (limits or Limits()).check()
    app = FastAPI(title="vlkit serve", version=_version(),
                  description=f"Classify images with the vlkit run `{served.run.name}` "
                              f"({served.method.name} on {served.meta['model']}); add labelled examples to an "
                              "upgrade run. Errors are `{\"error\": \"one line\"}` with a 4xx status.",
                  docs_url=None, redoc_url=None)  # the docs pages come from add_offline_docs: no CDN
    add_offline_docs(app, "vlkit serve")
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    page = _page()
    batcher = PredictionBatcher(served, max_images=max(limits.max_batch, 32))
    app.state.batcher = batcher

    @app.exception_handler(Refused)
    async def refused(_request: Any, exc: Refused) -> JSONResponse:
        return _refusal(exc.status, exc.message)

    @app.exception_handler(VlkitError)
    async def user_error(_request: Any, exc: VlkitError) -> JSONResponse:
        status = 409 if isinstance(exc, NotUpgradeableError) else 503 if isinstance(exc, RunWriteError) else 422
        return _refusal(status, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Any, exc: HTTPException) -> JSONResponse:
        return _refusal(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def malformed(_request: Any, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return _refusal(422, "; ".join(problems) + " (the form fields of each route are listed at /docs)")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and what is served."""
        info = served.info()
        return {"status": "ok", "run": info["run"], "method": info["method"], "classes": len(info["classes"]),
                "upgradeable": info["upgradeable"], "examples": info.get("examples")}

    @app.get("/classes")
    def classes() -> dict[str, Any]:
        """The run's classes; for an upgrade run also its example count per class and alpha/beta."""
        return {**served.info(), "heldout": heldout is not None,
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                           "max_side": limits.max_side, "max_batch": limits.max_batch,
                           "max_request_pixels": limits.max_request_pixels}}

    @app.post("/predict")
    def predict(files: List[UploadFile] = File(..., description="one or more images (PNG, JPEG, GIF, BMP, WEBP)"),
                top_k: int = Form(5, ge=1, description="classes to return per image")) -> dict[str, Any]:
        """Top-k classes with probabilities for each uploaded image."""
        images, names = _read_images(files, limits)
        start = time.perf_counter()
        rows = batcher.predict(images, top_k)  # one forward pass for every request waiting
        seconds = time.perf_counter() - start
        return {"predictions": [{"name": name, "top": top} for name, top in zip(names, rows)],
                "examples": served.info().get("examples"), "seconds_per_image": seconds / len(images)}

    @app.post("/examples")
    def examples(files: List[UploadFile] = File(..., description="images of one class"),
                 label: str = Form(..., description="their class (one of GET /classes)")) -> dict[str, Any]:
        """Add labelled images to an upgrade run's cache; answered once the change is on disk."""
        served.check_add(label)  # a fitted run or an unknown label: refused before reading a pixel
        images, _names = _read_images(files, limits)
        return served.add(images, label)

    @app.get("/heldout")
    def heldout_score() -> dict[str, Any]:
        """Top-1 accuracy of the current model on the fixed held-out sample (``--heldout``)."""
        return _need(heldout).score()

    @app.get("/heldout/tryouts")
    def tryouts() -> dict[str, Any]:
        """Train-split images of the held-out data to try (never held-out images): index and true class."""
        return {"items": [{"index": i, "class": name} for i, (name, _png) in enumerate(_need(heldout).tryouts)]}

    @app.get("/heldout/tryouts/{index}", responses={200: {"content": {"image/png": {}}}})
    def tryout_image(index: int) -> Response:
        """One try-out image as PNG."""
        items = _need(heldout).tryouts
        if not 0 <= index < len(items):
            raise Refused(404, f"no try-out image {index}: there are {len(items)} (0..{len(items) - 1})")
        return Response(items[index][1], media_type="image/png")

    return app


def _need(heldout: HeldOut | None) -> HeldOut:
    if heldout is None:
        raise Refused(404, "this server has no held-out sample: start it with `vlkit serve RUN --heldout DATA`")
    return heldout
