"""The HTTP layer of ``lipsync-tool serve`` (FastAPI): the app, its
middleware and its error answers.

The routes (:mod:`.routes`) are thin: the :class:`~lipsync_tool.serve.executor.Executor`
checks, queues and runs jobs.  Errors map from the library's categories
(:func:`~lipsync_tool.serve.http.status_for`) to ``{code, message, hint}``
answers; no traceback leaves the server unless ``LIPSYNC_TOOL_DEBUG=1``.  The
contract is docs/service.md.
"""

from __future__ import annotations

import logging
import traceback
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import LipsyncError, QueueFullError
from .executor import Executor
from .http import ApiError, ServeConfig, error_body, status_for
from .jobs import Defaults
from .limits import AccessLog, BodyLimit
from .paths import Root
from .routes import add_routes
from .store import JobStore

log = logging.getLogger(__name__)


def create_app(config: ServeConfig) -> FastAPI:
    """The service's app; the executor starts and stops with it."""
    root = Root(config.root)
    state: dict[str, Executor] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = JobStore(config.db)
        executor = Executor(store, root, Defaults(config.engine, config.lanes), runner=config.runner, max_queue=config.max_queue, expire_seconds=config.expire_seconds)
        executor.open()
        state["executor"] = executor
        log.info("serving %s (jobs in %s)", root.path, config.db)
        try:
            yield
        finally:
            await run_in_threadpool(executor.close)

    app = FastAPI(title="lipsync-tool", version=__version__, lifespan=lifespan, description="Lip-synced video from a portrait and speech: see docs/service.md.")
    app.state.config = config
    app.state.root = root
    app.state.executor = lambda: state["executor"]
    _add_middleware(app, config)
    _add_error_handlers(app, config)
    add_routes(app, config, root, lambda: state["executor"])
    return app


def _add_middleware(app: FastAPI, config: ServeConfig) -> None:
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes)
    app.add_middleware(AccessLog)


def _add_error_handlers(app: FastAPI, config: ServeConfig) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.hint), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(LipsyncError)
    async def _lib(request: Request, exc: LipsyncError) -> JSONResponse:
        status = status_for(exc)
        code = "invalid_request" if status == 422 else exc.category
        message = f"{exc.subject}: {exc.message}" if exc.subject else exc.message
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFullError) else None
        return JSONResponse(error_body(code, message, exc.hint), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse(error_body("invalid_request", "; ".join(parts) or "invalid request", "See /docs for the request's fields."), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        extra = {"traceback": "".join(traceback.format_exception(exc))} if config.debug else {}
        return JSONResponse(error_body("internal", f"an unexpected error ({type(exc).__name__})", "The server's log has the details.", **extra), status_code=500)



__all__ = ["ServeConfig", "create_app"]
