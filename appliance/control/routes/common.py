"""What every route group shares: the context dependency, authorization, error shapes and small checks."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from appliance.auth import host_header_is_loopback, token_matches
from appliance.control import models as m
from appliance.control.context import ControlContext
from appliance.speaker import QueueFull


def context(request: Request) -> ControlContext:
    ctx: ControlContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ControlContext, Depends(context)]

_bearer = HTTPBearer(auto_error=False, description="the token from control.token / token_file")


async def authorize(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)], ctx: Ctx
) -> None:
    if ctx.token is None:
        if not host_header_is_loopback(request.headers.get("host")):
            raise problem(403, "without a token only loopback Host names are accepted")
        return
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise problem(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    if not token_matches(credentials.credentials, ctx.token):
        raise problem(403, "wrong token")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": m.Problem, "description": "body cannot be read (not UTF-8)"},
    401: {"model": m.Problem, "description": "no bearer token"},
    403: {"model": m.Problem, "description": "wrong token"},
    413: {"model": m.Problem, "description": "body too large"},
    415: {"model": m.Problem, "description": "body is not JSON"},
}
SSE_EVENT = {
    "type": "object",
    "description": "one Server-Sent Event; data is JSON",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}},
    "required": ["event", "data"],
}
SSE = {"content": {"text/event-stream": {"itemSchema": SSE_EVENT}}, "description": "Server-Sent Events"}
BUSY: dict[int | str, dict[str, Any]] = {429: {"model": m.Problem}, 503: {"model": m.Problem}}


def protected() -> APIRouter:
    """A ``/v1`` router whose every route needs the token (or a loopback Host without one)."""
    return APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=ERRORS)


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


def invalid(loc: list[str], msg: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return HTTPException(status_code=422, detail=[{"loc": loc, "msg": msg, "type": "value_error"}])


def check_text(ctx: ControlContext, text: str) -> str:
    text = text.strip()
    if not text:
        raise invalid(["body", "text"], "text is blank")
    if len(text) > ctx.limits.max_say_chars:
        raise invalid(["body", "text"], f"text is {len(text)} characters; the limit is {ctx.limits.max_say_chars}")
    return text


def need_running(ctx: ControlContext, name: str) -> None:
    if not ctx.service_running(name):
        raise problem(503, f"the {name} subsystem is not running")


def submit(ctx: ControlContext, text: str, interrupt: bool) -> m.SayAccepted:
    need_running(ctx, "conversation")
    try:
        job = ctx.speaker.submit(text, interrupt=interrupt, source="api")
    except QueueFull as exc:
        raise problem(429, f"say queue is full: {exc}") from None
    return m.SayAccepted(id=job.id, position=ctx.speaker.position(job), interrupt=interrupt)


def finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
