"""`mmsearch serve`: the HTTP API and the search page, answered by the live release.

The same `SearchEngine` as the command line answers every request, loaded once and kept warm.
A watcher thread notices when another release goes live (LIVE.json changes), loads it beside
the serving one and swaps the reference: requests in flight finish on the old engine, new ones
use the new one, none fails. Bad requests get a 4xx and `{"error": "one line"}`; the server
keeps serving.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from mmsearch.catalog.images import ImageLimits, ImageRejected, decode_image
from mmsearch.index.artifacts import DamagedRelease
from mmsearch.index.registry import registry_for
from mmsearch.model.store import DamagedModel
from mmsearch.search.engine import (
    BadQuery,
    NothingLive,
    SearchEngine,
    UnknownCategory,
    UnknownProduct,
)
from mmsearch.settings import HomeLayout

MAX_K = 100
# Uploads larger than this are refused before they are read to the end.
MAX_UPLOAD_BYTES = 10 * 2**20
WATCH_SECONDS = 0.5
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# Reason codes of refused images and the status each gets.
IMAGE_STATUS = {"image_too_large": 413, "image_unsupported_type": 415}

log = logging.getLogger("mmsearch.server")


class BadRequest(HTTPException):
    def __init__(self, message: str, status: int = 400):
        super().__init__(status_code=status, detail=message)


class LiveSearch:
    """The engine of the live release, swapped for the next one when LIVE.json changes."""

    def __init__(self, layout: HomeLayout):
        self.layout = layout
        self.registry = registry_for(layout)
        self._engine: SearchEngine | None = None
        self._pointer: str | None = None
        self._refused: str | None = None  # a live pointer whose release did not verify
        self._stop = threading.Event()
        self.refresh()

    def _read_pointer(self) -> str | None:
        pointer = self.registry.live_pointer()
        return json.dumps(pointer, sort_keys=True) if pointer else None

    def refresh(self) -> bool:
        """Load the live release if it changed; True when the serving engine was swapped.

        A new live release whose files do not verify is refused once, naming the file, and the
        serving engine stays (at start-up, with none serving, the newest release that verifies)."""
        pointer = self._read_pointer()
        if pointer is None or pointer in (self._pointer, self._refused):
            return False
        try:
            engine = (
                SearchEngine.live(self.registry)
                if self._engine is None
                else SearchEngine.of(self.registry, self.registry.live().verified())
            )
        except (DamagedRelease, DamagedModel):
            self._refused = pointer
            raise
        if engine.fallback:
            log.error("live release refused, serving an earlier one: %s", engine.fallback)
        engine.text_features(["warm up"])  # encoders loaded before the first request needs them
        self._engine, self._pointer = engine, pointer  # one reference: requests see old or new
        log.info("serving %s", engine.release.index_version)
        return True

    def watch(self) -> None:
        while not self._stop.wait(WATCH_SECONDS):
            try:
                self.refresh()
            except Exception as error:  # a broken release must not stop the serving one
                log.error("new release not loaded, still serving the previous one: %s", error)

    def start(self) -> None:
        threading.Thread(target=self.watch, name="release-watcher", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def engine(self) -> SearchEngine:
        if self._engine is None:
            raise NothingLive("nothing is live yet: run `mmsearch run` (or `mmsearch demo`) first")
        return self._engine


def _k(value: str | None) -> int:
    if value is None or value == "":
        return 10
    try:
        k = int(value)
    except ValueError:
        raise BadRequest(f"k must be a whole number from 1 to {MAX_K}, not {value!r}") from None
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be from 1 to {MAX_K}, not {k}")
    return k


def _max_price(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        price = float(value)
    except ValueError:
        raise BadRequest(f"max_price must be a number, not {value!r}") from None
    if not math.isfinite(price) or price < 0:
        raise BadRequest(f"max_price must be a finite number >= 0, not {value!r}")
    return price


def _text(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


def _category(engine: SearchEngine, value: str | None) -> str | None:
    category = _text(value)
    try:
        engine.check_category(category)
    except UnknownCategory as error:
        raise BadRequest(str(error)) from None
    return category


async def _picture(upload: UploadFile, limits: ImageLimits):
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise BadRequest(f"image is larger than {MAX_UPLOAD_BYTES // 2**20} MB", 413)
    try:
        return decode_image(data, limits)
    except ImageRejected as rejected:
        status = IMAGE_STATUS.get(rejected.code, 400)
        raise BadRequest(f"image refused: {rejected.message}", status) from None


@functools.cache
def _page() -> str:
    return (resources.files("mmsearch") / "static" / "index.html").read_text(encoding="utf-8")


def create_app(live: LiveSearch, limits: ImageLimits = ImageLimits()) -> FastAPI:
    """The ASGI app over `live` (started and stopped with the app)."""
    app = FastAPI(
        title="mmsearch",
        summary="Multimodal product search: text, photo, or both; products like this one.",
        version="1",
        on_startup=[live.start],
        on_shutdown=[live.stop],
    )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, 400)

    @app.exception_handler(BadQuery)
    async def bad_query(request: Request, error: BadQuery) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.exception_handler(NothingLive)
    async def nothing_live(request: Request, error: NothingLive) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse({"error": f"internal error: {type(error).__name__}"}, 500)

    def versions(engine: SearchEngine) -> dict:
        return {
            "model_version": engine.model_version,
            "index_version": engine.release.index_version,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return _page()

    @app.get("/api/health")
    def health() -> dict:
        engine = live.engine
        return {"status": "ok", **versions(engine), "products": len(engine.products)}

    @app.get("/api/search")
    def search_by_text(
        text: Annotated[str | None, Query(description="what the shopper typed")] = None,
        k: Annotated[str | None, Query(description=f"results, 1 to {MAX_K} (10)")] = None,
        category: Annotated[str | None, Query(description="only this category")] = None,
        max_price: Annotated[str | None, Query(description="only up to this price")] = None,
    ) -> dict:
        engine = live.engine
        query = _text(text)
        if query is None:
            raise BadRequest("give a text to search for (text=...), or POST a photo")
        answer = engine.answer(
            query, None, _k(k), _category(engine, category), _max_price(max_price)
        )
        return {**versions(engine), **answer}

    @app.post("/api/search")
    async def search_by_photo(
        request: Request,
        image: Annotated[UploadFile | None, File(description="the shopper's photo")] = None,
        text: Annotated[str | None, Form()] = None,
        k: Annotated[str | None, Form()] = None,
        category: Annotated[str | None, Form()] = None,
        max_price: Annotated[str | None, Form()] = None,
    ) -> dict:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in FORM_TYPES:
            raise BadRequest(
                f"send a multipart form (image, text, k, category, max_price), not "
                f"{content_type or 'no content type'}",
                415,
            )
        engine = live.engine
        query = _text(text)
        has_upload = image is not None and bool(image.filename or image.size)
        if query is None and not has_upload:
            raise BadRequest("give a text, an image, or both")
        picture = await _picture(image, limits) if has_upload else None
        answer = await run_in_threadpool(
            engine.answer,
            query,
            picture,
            _k(k),
            _category(engine, category),
            _max_price(max_price),
        )
        return {**versions(engine), **answer}

    @app.get("/api/products/{product_id}/similar")
    def similar(
        product_id: str,
        k: Annotated[str | None, Query()] = None,
        category: Annotated[str | None, Query()] = None,
        max_price: Annotated[str | None, Query()] = None,
    ) -> dict:
        engine = live.engine
        try:
            results = engine.similar(
                product_id, _k(k), _category(engine, category), _max_price(max_price)
            )
        except UnknownProduct as error:
            raise BadRequest(str(error), 404) from None
        return {"product_id": product_id, **versions(engine), "results": results}

    @app.get("/api/products/{product_id}/image")
    def product_image(product_id: str) -> FileResponse:
        engine = live.engine
        try:
            row = engine.row_of_product(product_id)
        except UnknownProduct as error:
            raise BadRequest(str(error), 404) from None
        # Only the clean catalog image the release names: never a path from the request.
        image_file = engine.products["image_file"].iloc[row]
        if not isinstance(image_file, str) or not Path(image_file).is_file():
            raise BadRequest(f"product {product_id!r} has no image", 404)
        return FileResponse(image_file, media_type="image/jpeg")

    return app


def serve(layout: HomeLayout, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until stopped (Ctrl-C)."""
    import faiss
    import torch
    import uvicorn

    # Many requests at once: one thread each (encoders, FAISS) uses the cores better than every
    # request spreading over all of them and waiting on the others.
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(create_app(LiveSearch(layout)), host=host, port=port, log_level="warning")
