"""`mmsearch serve`: the HTTP API and the search page, answered by the live release.

The same `SearchEngine` as the command line answers every request, loaded once and kept warm.
A watcher thread notices when another release goes live (LIVE.json changes), loads it beside
the serving one and swaps the reference: requests in flight finish on the old engine, new ones
use the new one, none fails. Bad requests get a 4xx and `{"error": "one line"}`; the server
keeps serving.

Under load the work is CPU-bound and about half of it holds Python's GIL (the product table,
the ranker, the answer's JSON), so one process cannot keep two cores busy however many threads
it runs; more threads only queue on the GIL. `serve` therefore runs `workers` processes on one
listening socket (each loads the release, reading the same files), and each process runs at
most `threads` searches at once, every encoder and FAISS call on one thread; requests beyond
that wait their turn in the event loop instead of slowing every search down. Connections are
not spread evenly: each process accepts whatever arrives while it waits, so one may hold three
of four keep-alive connections. Two search threads a process let it overlap one search's
encoder and FAISS work (outside the GIL) with another's Python instead of leaving a core idle
(100,000 products, 4 connections, 2 cores: 2 processes x 1 thread gave 245 / 267 / 126 text
searches a second in three rounds, 2 x 2 gave 245 / 238 / 250).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import anyio
import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.exceptions import HTTPException

from mmsearch.api_models import (
    DEFAULT_K,
    ErrorAnswer,
    Health,
    Price,
    ResultCount,
    SearchAnswer,
    SimilarAnswer,
    blank_means,
    invalid_parameter,
)
from mmsearch.catalog.images import ImageLimits, ImageRejected, decode_image
from mmsearch.features.runtime import set_session_threads
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
from mmsearch.search.variants import UnknownFilter, parse_filter
from mmsearch.settings import HomeLayout, mm_home_from_env

# Uploads larger than this are refused before they are read to the end.
MAX_UPLOAD_BYTES = 10 * 2**20
WATCH_SECONDS = 0.5
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# Reason codes of refused images and the status each gets.
IMAGE_STATUS = {"image_too_large": 413, "image_unsupported_type": 415}
# The shop's currency (ISO 4217) the page shows prices in; the catalog's prices carry none.
CURRENCY_ENV = "MM_CURRENCY"
DEFAULT_CURRENCY = "USD"
# What `serve` hands its worker processes (they are started fresh and read the environment).
THREADS_ENV = "MM_SERVE_THREADS"
NOTHING_LIVE = "nothing is live yet: run `mmsearch run` (or `mmsearch demo`) first"
# What an API route may answer besides its own model (/openapi.json documents them).
ERRORS = {
    "4XX": {"model": ErrorAnswer, "description": "bad input, or an unknown product"},
    "5XX": {"model": ErrorAnswer, "description": "nothing is live yet (503), or a fault"},
}
# The query parameters the search routes share, as /openapi.json describes them.
KQuery = Annotated[ResultCount, blank_means(DEFAULT_K), Query(description="how many results")]
MaxPriceQuery = Annotated[
    Price | None, blank_means(None), Query(description="only up to this price")
]
CategoryQuery = Annotated[str | None, Query(description="only this category (any case)")]
FILTER_HELP = (
    "only products whose attribute NAME (color, size, material, pattern, gender, age_group, "
    "brand, product_type) is VALUE, as NAME:VALUE (color:red); repeatable: one name's values "
    "are alternatives, different names must all match"
)
GROUP_HELP = "false: variants one by one instead of one result per variant group"
UNAVAILABLE_HELP = "true: also out-of-stock products (left out by default)"
FilterQuery = Annotated[list[str] | None, Query(alias="filter", description=FILTER_HELP)]
GroupQuery = Annotated[bool, blank_means(True), Query(description=GROUP_HELP)]
UnavailableQuery = Annotated[bool, blank_means(False), Query(description=UNAVAILABLE_HELP)]

log = logging.getLogger("mmsearch.server")


class BadRequest(HTTPException):
    def __init__(self, message: str, status: int = 400):
        super().__init__(status_code=status, detail=message)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def currency_code(value: str | None = None) -> str:
    """`value`, else `$MM_CURRENCY`, else USD, as an upper-case ISO 4217 code."""
    code = (value or os.environ.get(CURRENCY_ENV) or DEFAULT_CURRENCY).strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise ValueError(f"currency must be a three-letter ISO 4217 code such as USD, not {code!r}")
    return code


def one_thread_per_search() -> None:
    """Each search's encoder sessions and FAISS calls on one thread: with a search in flight
    per core, a library spreading one search over every core only makes them wait on each
    other (call before the encoders load)."""
    import faiss

    faiss.omp_set_num_threads(1)
    set_session_threads(1)


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
        warm_up(engine)
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
    def serving(self) -> SearchEngine | None:
        return self._engine

    @property
    def engine(self) -> SearchEngine:
        if self._engine is None:
            raise NothingLive(NOTHING_LIVE)
        return self._engine


def warm_up(engine: SearchEngine) -> None:
    """Both encoders loaded and run once, and the result columns read, so no shopper's search
    pays for loading them."""
    engine.text_features(["warm up"])
    if len(engine.products):
        engine.describe(0, 0.0)
    if engine.products["image_sha"].fillna("").astype(str).ne("").any():
        engine.image_features([Image.new("RGB", (64, 64), (200, 30, 30))])


def _text(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


def _category(engine: SearchEngine, value: str | None) -> str | None:
    category = _text(value)
    try:
        engine.check_category(category)
    except UnknownCategory as error:
        raise BadRequest(str(error)) from None
    return category


def _filters(values: list[str] | None) -> list[tuple[str, str]]:
    """`filter=color:red` parameters as (name, value) pairs; a malformed one is a 400."""
    try:
        return [parse_filter(value, ":") for value in values or [] if value.strip()]
    except ValueError as error:
        raise BadRequest(str(error)) from None


def _picture(data: bytes, limits: ImageLimits) -> Image.Image:
    if len(data) > MAX_UPLOAD_BYTES:
        raise BadRequest(f"image is larger than {MAX_UPLOAD_BYTES // 2**20} MB", 413)
    try:
        return decode_image(data, limits)
    except ImageRejected as rejected:
        status = IMAGE_STATUS.get(rejected.code, 400)
        raise BadRequest(f"image refused: {rejected.message}", status) from None


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python number it holds (JSON knows no NumPy types)."""
    return value.item() if isinstance(value, np.generic) else value


def _for_shoppers(results: list[dict]) -> list[dict]:
    """Results as the API shows them: the picture's URL instead of the server's file path."""
    shown = []
    for result in results:
        image_file = result.get("image_file")
        fields = {name: _plain(value) for name, value in result.items() if name != "image_file"}
        fields.setdefault("matched", {})  # similar products: no query text, nothing matched
        fields["image_url"] = (
            f"/api/products/{quote(str(result['product_id']), safe='')}/image"
            if image_file
            else None
        )
        shown.append(fields)
    return shown


@functools.cache
def _page() -> str:
    return (resources.files("mmsearch") / "static" / "index.html").read_text(encoding="utf-8")


def create_app(
    live: LiveSearch,
    limits: ImageLimits = ImageLimits(),
    *,
    threads: int | None = None,
    currency: str | None = None,
) -> FastAPI:
    """The ASGI app over `live` (its watcher started and stopped with the app).

    `threads`: searches this process runs at once (default: its cores); `currency`: the ISO
    4217 code of the catalog's prices (default `$MM_CURRENCY`, else USD)."""
    currency = currency_code(currency)
    threads = threads or usable_cores()
    searches: dict[str, anyio.CapacityLimiter] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        searches["limiter"] = anyio.CapacityLimiter(threads)
        live.start()
        try:
            yield
        finally:
            live.stop()

    async def in_search_thread(function: Callable, *args: Any) -> Any:
        """Run a search on one of the process's `threads` search threads, waiting for a free
        one (the event loop keeps accepting requests meanwhile)."""
        return await anyio.to_thread.run_sync(function, *args, limiter=searches["limiter"])

    app = FastAPIOffline(
        # ReDoc's page fetches its logo from a CDN even with its script served here.
        redoc_url=None,
        title="mmsearch",
        summary="Multimodal product search: text, photo, or both; products like this one.",
        version="1",
        lifespan=lifespan,
    )

    home = str(live.layout.root.resolve())

    def refusal(message: object, status: int) -> JSONResponse:
        """`{"error": one line}`, with the home's path, should a message name it, left out:
        no server path leaves the server."""
        line = " ".join(str(message).split()).replace(home, "$MM_HOME")
        return JSONResponse({"error": line}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return refusal(error.detail, error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        return refusal(invalid_parameter(errors[0]) if errors else "invalid request", 400)

    @app.exception_handler(BadQuery)
    async def bad_query(request: Request, error: BadQuery) -> JSONResponse:
        return refusal(error, 400)

    @app.exception_handler(UnknownFilter)
    async def unknown_filter(request: Request, error: UnknownFilter) -> JSONResponse:
        return refusal(error, 400)

    @app.exception_handler(NothingLive)
    async def nothing_live(request: Request, error: NothingLive) -> JSONResponse:
        return refusal(error, 503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("request failed")
        return refusal(f"internal error: {type(error).__name__}", 500)

    def versions(engine: SearchEngine) -> dict:
        return {
            "model_version": engine.model_version,
            "index_version": engine.release.index_version,
            "currency": currency,
        }

    def answer(
        engine: SearchEngine,
        text: str | None,
        picture_bytes: bytes | None,
        k: int,
        category: str | None,
        max_price: float | None,
        filters: list[tuple[str, str]],
        group: bool,
        include_unavailable: bool,
    ) -> dict:
        """One search, from the request's values to the API's JSON (in a search thread)."""
        picture = _picture(picture_bytes, limits) if picture_bytes is not None else None
        found = engine.answer(
            text,
            picture,
            k,
            _category(engine, category),
            max_price,
            filters,
            group,
            include_unavailable,
        )
        return {**versions(engine), **found, "results": _for_shoppers(found["results"])}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return _page()

    # Search answers are sent as built (JSONResponse): `response_model` documents them without
    # validating every result on every request (the tests validate real answers).
    @app.get("/api/health", response_model=Health, responses=ERRORS)
    def health() -> dict:
        engine = live.engine
        return {"status": "ok", **versions(engine), "products": len(engine.products)}

    # Load balancers and uptime checks often ask with HEAD: the same status, no body.
    @app.head("/api/health", include_in_schema=False)
    def health_head() -> Response:
        engine = live.engine  # nothing live: 503, as for GET
        return Response(headers={"x-index-version": engine.release.index_version})

    @app.get("/api/search", response_model=SearchAnswer, responses=ERRORS)
    async def search_by_text(
        text: Annotated[str | None, Query(description="what the shopper typed")] = None,
        k: KQuery = DEFAULT_K,
        category: CategoryQuery = None,
        max_price: MaxPriceQuery = None,
        filters: FilterQuery = None,
        group: GroupQuery = True,
        include_unavailable: UnavailableQuery = False,
    ) -> JSONResponse:
        engine = live.engine
        query = _text(text)
        if query is None:
            raise BadRequest("give a text to search for (text=...), or POST a photo")
        narrowing = (_filters(filters), group, include_unavailable)
        found = await in_search_thread(
            answer, engine, query, None, k, category, max_price, *narrowing
        )
        return JSONResponse(found)

    @app.post("/api/search", response_model=SearchAnswer, responses=ERRORS)
    async def search_by_photo(
        request: Request,
        image: Annotated[UploadFile | None, File(description="the shopper's photo")] = None,
        text: Annotated[str | None, Form(description="what the shopper typed")] = None,
        k: Annotated[ResultCount, Form(description="how many results")] = DEFAULT_K,
        category: Annotated[str | None, Form(description="only this category")] = None,
        max_price: Annotated[Price | None, Form(description="only up to this price")] = None,
        filters: Annotated[list[str] | None, Form(alias="filter", description=FILTER_HELP)] = None,
        group: Annotated[bool, Form(description=GROUP_HELP)] = True,
        include_unavailable: Annotated[bool, Form(description=UNAVAILABLE_HELP)] = False,
    ) -> JSONResponse:
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
        # Read one byte past the limit: a larger upload is refused without reading the rest.
        data = await image.read(MAX_UPLOAD_BYTES + 1) if has_upload else None
        narrowing = (_filters(filters), group, include_unavailable)
        found = await in_search_thread(
            answer, engine, query, data, k, category, max_price, *narrowing
        )
        return JSONResponse(found)

    # `:path`: a product id may hold a `/` (SKUs such as `TEE/RED-M`), which arrives decoded.
    @app.get(
        "/api/products/{product_id:path}/similar", response_model=SimilarAnswer, responses=ERRORS
    )
    async def similar(
        product_id: str,
        k: KQuery = DEFAULT_K,
        category: CategoryQuery = None,
        max_price: MaxPriceQuery = None,
        filters: FilterQuery = None,
        group: GroupQuery = True,
        include_unavailable: UnavailableQuery = False,
    ) -> JSONResponse:
        engine = live.engine
        narrowing = (_filters(filters), group, include_unavailable)

        def like_this() -> dict:
            try:
                results = engine.similar(
                    product_id, k, _category(engine, category), max_price, *narrowing
                )
            except UnknownProduct as error:
                raise BadRequest(str(error), 404) from None
            return {"product_id": product_id, **versions(engine), "results": _for_shoppers(results)}

        return JSONResponse(await in_search_thread(like_this))

    @app.get(
        "/api/products/{product_id:path}/image",
        response_class=FileResponse,
        responses={200: {"content": {"image/jpeg": {}}, "description": "JPEG"}, **ERRORS},
    )
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


def app_from_environment() -> FastAPI:
    """The app of one `serve` worker process: the home in `$MM_HOME`, searches at once in
    `$MM_SERVE_THREADS`, the currency in `$MM_CURRENCY` (uvicorn's app factory)."""
    one_thread_per_search()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    threads = int(os.environ.get(THREADS_ENV) or 0) or None
    return create_app(LiveSearch(HomeLayout(mm_home_from_env())), threads=threads)


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before any worker starts (port 0: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise OSError(
            f"cannot listen on {host}:{port} ({error.strerror}); pass another --port"
        ) from None
    listener.set_inheritable(True)
    return listener


def _what_is_live(layout: HomeLayout) -> str:
    release = registry_for(layout).live()
    if release is None:
        return f"{NOTHING_LIVE}; until then every search answers 503"
    return f"serving {release.size:,} products (release {release.index_version})"


def serve(
    layout: HomeLayout,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    threads: int | None = None,
    currency: str | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until stopped (Ctrl-C), after announcing the URL.

    `workers` processes (default: one per core) share the listening socket; each runs up to
    `threads` searches at once (default: its share of the cores, at least two)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    cores = usable_cores()
    workers = workers or cores
    threads = threads or max(2, cores // workers)
    os.environ.update(
        {
            "MM_HOME": str(layout.root),
            THREADS_ENV: str(threads),
            CURRENCY_ENV: currency_code(currency),
        }
    )
    listener = _listening_socket(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{listener.getsockname()[1]}/"
    announce(
        f"mmsearch: {url} (API documentation at {url}docs): {_what_is_live(layout)}; "
        f"{workers} worker process(es), {threads} search thread(s) each. Ctrl-C stops."
    )
    config = uvicorn.Config(
        "mmsearch.server:app_from_environment",
        factory=True,
        workers=workers,
        log_level="warning",
        access_log=False,
        # Loading a large new release can hold a worker's interpreter for seconds; uvicorn
        # must not take that for a hung worker and kill it mid-request.
        timeout_worker_healthcheck=120,
    )
    if workers == 1:
        uvicorn.Server(config).run(sockets=[listener])
    else:
        Multiprocess(config, sockets=[listener]).run()
