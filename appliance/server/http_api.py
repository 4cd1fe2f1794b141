"""``appliance serve`` over HTTP: AIAvatarKit's HTTP/SSE API, a Dify-compatible endpoint, STT and TTS.

FastAPI on hypercorn's Trio worker, on its own port (``[server] http_port``), behind the same key and the
same bind rule as the WebSocket. The guard answers before any body is read: a wrong key gets 401 (as
AIAvatarKit does), a body announced larger than the route allows 413; bodies that trickle in are cut off
after ``start_timeout`` (see :mod:`appliance.server.http_routes`).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
from functools import partial
from typing import Any

import trio

from appliance.audio.base import CAPTURE_RATE
from appliance.groups import single_error
from appliance.server.histories import Histories
from appliance.server.http_routes import IMAGE_BYTES
from appliance.server.http_turns import HttpTurns
from appliance.settings.brains import ServerConfig
from appliance.turns import Brain
from appliance.web_serving import hypercorn_config, listen_socket, url_port

log = logging.getLogger(__name__)

JSON_OVERHEAD = 64 * 1024  # the JSON around a request's base64 audio
TEXT_BODY_LIMIT = 64 * 1024  # a text-only request (Dify's /chat-messages, /tts)


def body_limits(config: ServerConfig) -> dict[str, int]:
    """The largest body each route accepts, from the longest audio a request may carry."""
    pcm = int(config.max_audio_seconds * CAPTURE_RATE) * 2
    wav = pcm * 6 + 1024  # a WAV may come at 48 kHz stereo; it is resampled to 16 kHz mono after
    return {
        "/chat": pcm * 4 // 3 + IMAGE_BYTES * 4 // 3 + JSON_OVERHEAD,  # audio and/or a client camera's stills
        "/start": TEXT_BODY_LIMIT,
        "/chat-messages": TEXT_BODY_LIMIT,
        "/stt": wav,
        "/transcribe": wav * 4 // 3 + JSON_OVERHEAD,  # multipart, the file may be base64 encoded
        "/tts": TEXT_BODY_LIMIT,
        "/synthesize": TEXT_BODY_LIMIT,
    }


class HttpGuard:
    """ASGI middleware: key, method and announced size checked before the app reads a byte of the body."""

    def __init__(self, app: Any, api_key: str | None, limits: dict[str, int]) -> None:
        self.app = app
        self.api_key = api_key
        self.limits = limits

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.limits.get(scope["path"])
        if limit is None:
            await _answer(send, 404, {"detail": "Not Found"})
        elif not self._authorised(headers.get("authorization", "")):
            log.warning("refused an HTTP client with a bad key")
            await _answer(send, 401, {"detail": "Invalid or missing API Key"}, ((b"www-authenticate", b"Bearer"),))
        elif scope["method"] != "POST":
            await _answer(send, 405, {"detail": "Method Not Allowed"}, ((b"allow", b"POST"),))
        elif _announced(headers) > limit:
            await _answer(send, 413, {"detail": f"request body over {limit} bytes"})
        else:
            scope.setdefault("state", {})["body_limit"] = limit
            await self.app(scope, receive, send)

    def _authorised(self, header: str) -> bool:
        if self.api_key is None:
            return True
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())


def _announced(headers: dict[str, str]) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 1 << 62  # nonsense is refused as too large


async def _answer(send: Any, status: int, body: dict[str, Any], extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class HttpAvatarServer:
    """The HTTP API as a task: bind, then serve until cancelled (``appliance serve`` runs it beside the WS)."""

    name = "avatar-http"

    def __init__(
        self,
        brain: Brain,
        config: ServerConfig,
        *,
        history_limit: int = 20,
        histories: Histories | None = None,
        listener: socket.socket | None = None,
    ) -> None:
        from appliance.server.avatar import check_bind

        check_bind(config)
        self.brain = brain
        self.config = config
        self.turns = HttpTurns(brain, history_limit=history_limit, histories=histories)
        self.listener = listener  # a socket bound for us (a worker's share of the port), else bind host:http_port
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        from hypercorn.trio import serve

        from appliance.server.http_routes import create_app

        cfg = self.config
        assert cfg.http_port is not None, "the HTTP API is off"
        api_key = cfg.api_key.get_secret_value() if cfg.api_key else None
        app = HttpGuard(create_app(self), api_key, body_limits(cfg))
        if self.listener is None:
            fd, url = listen_socket(cfg.host, cfg.http_port)
        else:
            host, port = self.listener.getsockname()[:2]
            fd, url = self.listener.detach(), f"http://{host}:{port}"
        self.port = url_port(url)
        handed_over = False
        try:
            with single_error():
                async with trio.open_nursery() as nursery:
                    handed_over = True
                    await nursery.start(partial(serve, app, hypercorn_config(fd, "appliance.server.http", log)))
                    log.info("serving the AIAvatarKit HTTP API on %s/chat", url)
                    task_status.started(self.port)
        finally:
            if not handed_over:
                os.close(fd)
