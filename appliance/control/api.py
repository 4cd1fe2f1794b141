"""The control API (FastAPI on hypercorn's Trio worker): the app, its error shapes and its schema; the routes
are in :mod:`appliance.control.routes`, the checks before any route in :mod:`appliance.control.guard`.

Everything is under ``/v1`` and needs ``Authorization: Bearer <token>`` when a token is configured, except
``/v1/health``. Without a token (loopback only) requests must name a loopback Host, which keeps web pages
from reaching the robot through DNS rebinding.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from appliance import __version__
from appliance.control.context import ControlContext
from appliance.control.guard import Guard, allowed_methods
from appliance.control.routes import conversation, docs, histories, listening, metrics, settings, speech, status

__all__ = ["Guard", "create_app"]


def create_app(ctx: ControlContext) -> FastAPI:
    app = FastAPI(
        title="appliance control API",
        version=__version__,
        description="Manage a talking robot on the local network: status, speech, faces, mute, config.",
        docs_url=None,
        openapi_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(status.public)
    for group in (status, listening, speech, conversation, histories, settings, metrics):
        app.include_router(group.router)
    app.include_router(docs.router)
    plain_openapi = app.openapi

    def openapi_with_sse() -> dict[str, Any]:
        # FastAPI describes a streaming response class as one string; each SSE event is the unit here.
        document = plain_openapi()
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                for response in operation.get("responses", {}).values():
                    stream = response.get("content", {}).get("text/event-stream")
                    if stream is not None and "itemSchema" in stream:
                        stream.pop("schema", None)
                        response["content"].pop("application/json", None)
        return document

    app.openapi = openapi_with_sse  # type: ignore[method-assign]
    return app


async def _validation_failed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # every method the path takes, not only those of the first route matched
        headers["Allow"] = ", ".join(sorted(allowed_methods(request.app, request.scope)))
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
