"""``appliance serve`` shares one connection pool per cloud service among its robots: ten robots' sentences at
once must neither queue behind the pool nor lose their connections between bursts (a new one is a handshake)."""

from __future__ import annotations

import trio
from starlette.types import ASGIApp, Receive, Scope, Send

from appliance.providers.tts.openai import OpenAISynthesizer
from appliance.server.avatar import TTS_CONCURRENCY
from tests.fakes.cloud import fake_cloud

ROBOTS = 10


class Ports:
    """ASGI middleware: the client port of every request, so a test sees which connection carried it."""

    def __init__(self, app: ASGIApp, ports: list[int]) -> None:
        self.app = app
        self.ports = ports

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("client"):
            self.ports.append(scope["client"][1])
        await self.app(scope, receive, send)


async def test_ten_robots_speech_at_once_neither_queues_nor_reconnects() -> None:
    at_once = ROBOTS * (TTS_CONCURRENCY - 1)  # three sentences each, the bench's reply
    ports: list[int] = []
    async with fake_cloud() as cloud:
        cloud.app.middleware_stack = Ports(cloud.app.middleware_stack or cloud.app.build_middleware_stack(), ports)
        cloud.tts.latency = 0.3  # every request is still waiting for its answer when the last one arrives
        tts = OpenAISynthesizer("tts-1", "alloy", "key", f"{cloud.url}/v1", timeout=10)
        heard: list[int] = []

        async def speak() -> None:
            heard.append(len((await tts.synthesize("Hello there.")).samples))

        bursts: list[list[int]] = []
        for _ in range(2):
            cloud.requests.clear()
            async with trio.open_nursery() as nursery:
                for _ in range(at_once):
                    nursery.start_soon(speak)
            bursts.append(ports[-at_once:])
            # All arrived before the first answer began: none waited for another's connection.
            assert max(r.at for r in cloud.requests) < min(r.first_byte_at or 0 for r in cloud.requests)
        await tts.aclose()
    assert len(heard) == 2 * at_once and min(heard) > 0
    assert len(set(bursts[0])) == at_once  # one connection each
    assert set(bursts[1]) == set(bursts[0])  # and every one kept for the next burst
