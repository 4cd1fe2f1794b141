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


async def test_ten_robots_at_once_each_get_their_own_whole_reply(nursery: trio.Nursery) -> None:
    """What ``appliance serve`` runs (the CloudBrain on the fake cloud, PCM mode) with ten robots' invokes at
    once: every turn ends in its own ``final``, every frame carries its own session, no sentence goes missing."""
    import base64
    import json

    from trio_websocket import open_websocket_url

    from appliance.assembly.brains import cloud_brain_factory
    from appliance.conversation.local_voice import LocalVoice
    from appliance.server.avatar import AvatarServer
    from appliance.settings.brains import ServerConfig
    from tests.harness import cloud_config

    pcm = base64.b64encode(b"\x10\x00" * 16_000).decode()  # 1 s, as the bench's robots send
    async with fake_cloud() as cloud:
        brain = cloud_brain_factory(cloud_config(cloud.url), LocalVoice())()
        server = AvatarServer(brain, ServerConfig(host="127.0.0.1", port=0, pcm=True, max_connections=ROBOTS))
        port = await nursery.start(server.run)
        frames: dict[str, list[dict]] = {}

        async def robot(name: str) -> None:
            async with open_websocket_url(f"ws://127.0.0.1:{port}/ws", max_message_size=1 << 24) as ws:
                await ws.send_message(json.dumps({"type": "start", "session_id": name, "context_id": name}))
                assert json.loads(await ws.get_message())["type"] == "connected"
                await ws.send_message(json.dumps({"type": "invoke", "session_id": name, "audio_data": pcm}))
                mine = frames.setdefault(name, [])
                while not mine or mine[-1]["type"] not in ("final", "error", "canceled"):
                    mine.append(json.loads(await ws.get_message()))

        with trio.fail_after(30):
            async with trio.open_nursery() as robots:
                for index in range(ROBOTS):
                    robots.start_soon(robot, f"robot-{index}")
        await brain.aclose()
    assert sorted(frames) == sorted(f"robot-{index}" for index in range(ROBOTS))
    for name, mine in frames.items():
        assert mine[-1]["type"] == "final" and mine[-1]["metadata"]["request_text"] == "What time is it?"
        assert {f["session_id"] for f in mine} == {name} and {f["context_id"] for f in mine} == {name}
        said = [f["text"] for f in mine if f["type"] == "chunk" and f.get("text")]
        assert said == ["[face:joy] It is nine o'clock.", "Time for breakfast!", "[animation:wave] Have a nice day."]
        assert sum(len(base64.b64decode(f["audio_data"])) for f in mine if f.get("audio_data")) > 0
    assert len(cloud.bodies("/v1/audio/transcriptions")) == ROBOTS
    assert len(cloud.bodies("/v1/audio/speech")) == 3 * ROBOTS


async def test_serving_freezes_what_start_up_left_so_full_collections_skip_it() -> None:
    """A full garbage collection walked the whole start-up heap (a 50-60 ms pause here under every turn in
    flight): once the servers listen, that heap is frozen, and a later full collection walks only what came after."""
    import gc
    import os
    import signal

    from appliance.server.serving import serve_all_until_signalled

    class Listening:
        started = trio.Event()

        async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            self.started.set()
            await trio.sleep_forever()

    gc.unfreeze()
    server = Listening()
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_all_until_signalled, server)
                await server.started.wait()
                await trio.sleep(0.01)  # the heap is settled right after every server has started
                frozen = gc.get_freeze_count()
                os.kill(os.getpid(), signal.SIGINT)  # and serving still stops on a signal
    finally:
        gc.unfreeze()
    assert frozen > 10_000  # modules, pydantic's schemas, this test run: all of it left out of full collections
