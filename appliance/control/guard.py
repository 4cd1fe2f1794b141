"""The control API's front door: a pure ASGI middleware that checks who asks, from where, with what body, and
when, before any route runs (see :class:`Guard`)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import trio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.auth import host_header_is_loopback, token_matches
from appliance.control.context import ControlContext

STREAMING_PATHS = ("/v1/events", "/v1/conversation")
PUBLIC_PATHS = ("/v1/health",)
BODY_METHODS = ("POST", "PUT", "PATCH")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class Guard:
    """Pure ASGI middleware in front of every route: who may ask, from where, with what body, and when.

    In order, before any route runs and before a byte of body is read:

    * ``/v1/health`` is answered at once: no token, no queue, so a monitor sees the robot however busy it is.
    * The caller is authenticated from the headers (bearer token, or a loopback Host without one), so a
      stranger cannot hold anything open by sending headers and then no body.
    * A state-changing request must come from the robot's own origin (``Origin``/``Sec-Fetch-Site``) and,
      if it may carry a body, say ``Content-Type: application/json``, empty bodies included: a web page in
      the owner's browser can only send simple cross-site requests (form or text/plain, no custom
      headers), and those are refused here.
    * The body is read within ``body_timeout`` and capped at ``max_body`` bytes, outside the turnstile.

    Then the turnstile keeps the API from starving audio: the appliance runs on one event loop, and Trio
    runs every ready task before it looks at timers again, so fifty requests handled at once would make an
    audio block wait for all of them. At most ``concurrency`` requests are handled at a time; the rest wait
    parked (costing nothing) in arrival order. Event streams are exempt (they are capped by count and mostly
    idle).
    """

    def __init__(self, app: ASGIApp, ctx: ControlContext, concurrency: int = 2) -> None:
        self.app = app
        self.ctx = ctx
        self.turnstile = trio.Semaphore(concurrency)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._counted(send)
        if scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._unauthenticated(headers)
        if refusal is None and scope["method"] not in allowed_methods(self.app, scope):
            # A 404 or 405 (the schema lists every route that takes a body): answered without the body.
            await self.app(scope, _replay(b"", receive), send)
            return
        refusal = refusal or self._unsafe(scope["method"], headers)
        if refusal is not None:
            await _reply(send, *refusal)
            return
        if scope["method"] in BODY_METHODS:
            body = await self._read_body(headers, receive, send)
            if body is None:
                return
            receive = _replay(body, receive)
        if scope["path"] in STREAMING_PATHS:
            await self.app(scope, receive, send)
            return
        async with self.turnstile:
            await self.app(scope, receive, send)

    def _counted(self, send: Send) -> Send:
        """``send`` that counts each answer's status for /v1/metrics (refusals made here included)."""
        responses = self.ctx.metrics.responses

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                responses[int(message["status"])] += 1
            await send(message)

        return counted

    def _unauthenticated(self, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
        token = self.ctx.token
        if token is None:
            if not host_header_is_loopback(headers.get("host")):
                return 403, "without a token only loopback Host names are accepted", {}
        else:
            scheme, _, presented = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not presented.strip():
                return 401, "missing bearer token", {"www-authenticate": "Bearer"}
            if not token_matches(presented.strip(), token):
                return 403, "wrong token", {}
        return None

    def _unsafe(self, method: str, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
        if method in SAFE_METHODS:
            return None
        if not same_origin(headers):
            return 403, "cross-site request refused: send it from the robot's own origin or without a browser", {}
        if method in BODY_METHODS and not _is_json(headers.get("content-type", "")):
            return 415, "send the body as application/json (an empty body is {})", {}
        return None

    async def _read_body(self, headers: dict[str, str], receive: Receive, send: Send) -> bytes | None:
        limits = self.ctx.limits
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            await _reply(send, 413, f"request body over {limits.max_body_bytes} bytes")
            return None
        body = bytearray()
        with trio.move_on_after(limits.body_timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                body += message.get("body", b"")
                if len(body) > limits.max_body_bytes:
                    await _reply(send, 413, f"request body over {limits.max_body_bytes} bytes")
                    return None
                if not message.get("more_body", False):
                    return bytes(body)
        await _reply(
            send, 408, f"the request body did not arrive within {limits.body_timeout:g} s", {"connection": "close"}
        )
        return None


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def same_origin(headers: dict[str, str]) -> bool:
    """False for a request a browser sent on behalf of another site (what a CSRF attempt looks like)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is None:
        return True  # not sent by a browser's cross-site fetch (browsers always send Origin there)
    parts = urlsplit(origin.strip())
    host = headers.get("host", "").strip().lower()
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == host


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    import json

    payload = json.dumps({"detail": detail}).encode()
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def allowed_methods(app: Any, scope: Scope) -> set[str]:
    """The methods the schema lists for this path (the docs pages take GET)."""
    patterns = getattr(app.state, "method_patterns", None)
    if patterns is None:
        patterns = app.state.method_patterns = [
            (
                re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"),
                {method.upper() for method in operations},
            )
            for template, operations in app.openapi().get("paths", {}).items()
        ] + [(re.compile(r"^/(openapi\.json|docs|docs/[^/]+)$"), {"GET"})]
    methods: set[str] = set()
    for pattern, allowed in patterns:
        if pattern.match(scope["path"]):
            methods |= allowed
    return methods
