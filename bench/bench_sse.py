"""``appliance serve``: first audio chunk over HTTP/SSE (``POST /chat``) against the WebSocket, same brain.

Both servers run in this process on one in-process brain that answers its first sentence (with 0.5 s of
audio) after 50 ms, so what differs is only the transport: HTTP request + SSE framing against an open
WebSocket session. Turns alternate between the two (paired); the figure is the median paired difference of
"request sent → first chunk carrying audio parsed". The HTTP client keeps its connection alive, as
AIAvatarKit's ``AIAvatarHttpClient`` does. ``python -m bench sse``.
"""

from __future__ import annotations

import json
import math
import time

import httpx
import numpy as np
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from appliance.audio.base import AudioClip
from appliance.server.avatar import AvatarServer
from appliance.server.http_api import HttpAvatarServer
from appliance.settings.brains import ServerConfig
from appliance.turns import BrainOutput, ReplyChunk, TurnRequest
from bench.common import Figure, median

TURNS = 30
KEY = "bench-key"


class _Brain:
    name = "bench"

    async def reply(self, req: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        t = np.arange(12_000) / 24_000
        audio = AudioClip((np.sin(2 * math.pi * 220 * t) * 8000).astype(np.int16), 24_000)
        async with out:
            await trio.sleep(0.05)
            await out.send(ReplyChunk("Hello there.", "Hello there.", (), audio))

    async def aclose(self) -> None:
        return None


async def _ws_turn(ws: WebSocketConnection, n: int) -> float:
    started = time.perf_counter()
    await ws.send_message(json.dumps({"type": "invoke", "session_id": "b", "text": f"turn {n}"}))
    first = 0.0
    while True:
        frame = json.loads(await ws.get_message())
        if frame["type"] == "chunk" and frame["audio_data"] and not first:
            first = time.perf_counter() - started
        if frame["type"] in ("final", "error", "canceled"):
            return first


async def _http_turn(client: httpx.AsyncClient, n: int) -> float:
    started = time.perf_counter()
    first = 0.0
    body = {"type": "start", "session_id": "b", "text": f"turn {n}"}
    async with client.stream("POST", "/chat", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                frame = json.loads(line[5:])
                if frame["type"] == "chunk" and frame["audio_data"] and not first:
                    first = time.perf_counter() - started
    return first


async def bench() -> list[Figure]:
    config = ServerConfig(host="127.0.0.1", port=0, http_port=0, api_key=KEY)  # type: ignore[arg-type]
    brain = _Brain()
    ws_times: list[float] = []
    http_times: list[float] = []
    async with trio.open_nursery() as nursery:
        ws_server = AvatarServer(brain, config)
        http_server = HttpAvatarServer(brain, config)
        await nursery.start(ws_server.run)
        await nursery.start(http_server.run)
        headers = {"Authorization": f"Bearer {KEY}"}
        url = f"ws://127.0.0.1:{ws_server.port}/ws"
        async with (
            open_websocket_url(url, extra_headers=[(b"Authorization", f"Bearer {KEY}".encode())]) as ws,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_server.port}", headers=headers) as client,
        ):
            await ws.send_message(json.dumps({"type": "start", "session_id": "b"}))
            await ws.get_message()
            await _ws_turn(ws, -1)  # warm both paths
            await _http_turn(client, -1)
            for n in range(TURNS):
                pair = [_ws_turn(ws, n), _http_turn(client, n)]
                for which in pair if n % 2 else pair[::-1]:
                    value = await which
                    (ws_times if which is pair[0] else http_times).append(value * 1000)
        nursery.cancel_scope.cancel()
    diff = median([h - w for h, w in zip(http_times, ws_times, strict=True)])
    return [
        Figure("serve: first audio chunk, WebSocket", median(ws_times), "ms", "", "brain's own wait 50 ms"),
        Figure("serve: first audio chunk, HTTP/SSE /chat", median(http_times), "ms", "", "brain's own wait 50 ms"),
        Figure("serve: HTTP/SSE minus WebSocket, paired", diff, "ms", "", f"median of {TURNS} paired turns"),
    ]


def main() -> list[Figure]:
    return trio.run(bench)
