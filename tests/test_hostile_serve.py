"""``appliance serve`` against hostile clients on 127.0.0.1: open binds, idle sockets, many sessions, huge
audio, deep JSON. Each test is bounded (a few connections, short timeouts set in the config)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket_url

from appliance.audio.base import CAPTURE_RATE
from appliance.server.avatar import AvatarServer
from appliance.settings.brains import ServerConfig
from appliance.settings_base import ConfigError
from appliance.turns import BrainOutput, ReplyChunk, TurnRequest

KEY = "secret-key"
HEADERS = [("Authorization", f"Bearer {KEY}")]


class HeldBrain:
    """Answers once ``release`` is set, so a test can keep replies (and their audio) in flight."""

    name = "held"

    def __init__(self) -> None:
        self.release = trio.Event()
        self.started = 0

    async def reply(self, req: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            self.started += 1
            await self.release.wait()
            await out.send(ReplyChunk("Done.", "Done."))

    async def aclose(self) -> None:
        return None


async def serve(nursery: trio.Nursery, brain: Any = None, **config: object) -> AvatarServer:
    values: dict[str, object] = {"host": "127.0.0.1", "port": 0, "api_key": KEY}
    values.update(config)
    server = AvatarServer(brain or HeldBrain(), ServerConfig.model_validate(values))
    await nursery.start(server.run)
    return server


def url(server: AvatarServer) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def send(ws: WebSocketConnection, kind: str, session: str = "s1", **fields: Any) -> None:
    await ws.send_message(json.dumps({"type": kind, "session_id": session, **fields}))


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(10):  # a hang guard, not a timing check
        return json.loads(await ws.get_message())  # type: ignore[no-any-return]


def pcm_b64(seconds: float) -> str:
    return base64.b64encode(b"\x00\x01" * int(seconds * CAPTURE_RATE)).decode("ascii")


# --- binding ---------------------------------------------------------------------------------------------


def test_serve_defaults_to_loopback() -> None:
    assert ServerConfig().host == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_a_network_bind_without_a_key_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="server.api_key"):
        AvatarServer(HeldBrain(), ServerConfig(host=host))
    AvatarServer(HeldBrain(), ServerConfig(host=host, api_key="k" * 20))  # with a key it may
    AvatarServer(HeldBrain(), ServerConfig(host="127.0.0.1"))  # and loopback needs none


def test_appliance_serve_refuses_a_network_bind_without_a_key(tmp_path, capsys, monkeypatch) -> None:
    from appliance.cli import main

    monkeypatch.delenv("APPLIANCE_SERVER__API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = tmp_path / "serve.toml"
    config.write_text('[stt]\napi_key = "sk-test"\n[llm]\napi_key = "sk-test"\n[tts]\napi_key = "sk-test"\n')
    assert main(["--config", str(config), "serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "server.api_key" in capsys.readouterr().err


# --- idle connections and sessions ------------------------------------------------------------------------


async def test_idle_connections_cannot_hold_every_slot(nursery: trio.Nursery) -> None:
    server = await serve(nursery, max_connections=2, start_timeout=0.2, idle_timeout=0.4)
    async with (
        open_websocket_url(url(server), extra_headers=HEADERS) as silent,
        open_websocket_url(url(server), extra_headers=HEADERS) as started,
    ):
        await send(started, "start")
        assert (await receive(started))["type"] == "connected"
        with pytest.raises(ConnectionRejected) as full:
            async with open_websocket_url(url(server), extra_headers=HEADERS):
                pass
        assert full.value.status_code == 503
        # Neither ever sends again: the one without a session goes first, the idle session after it.
        for ws in (silent, started):
            with trio.fail_after(10), pytest.raises(ConnectionClosed):
                await ws.get_message()
    with trio.fail_after(10):
        while server.connections:
            await trio.sleep(0.01)
    async with open_websocket_url(url(server), extra_headers=HEADERS) as next_robot:
        await send(next_robot, "start")
        assert (await receive(next_robot))["type"] == "connected"


async def test_a_connection_that_is_answered_is_not_idle(nursery: trio.Nursery) -> None:
    brain = HeldBrain()
    server = await serve(nursery, brain, idle_timeout=0.2)
    async with open_websocket_url(url(server), extra_headers=HEADERS) as ws:
        await send(ws, "start")
        await receive(ws)
        await send(ws, "invoke", text="hello")
        assert (await receive(ws))["type"] == "accepted"
        await trio.sleep(0.6)  # longer than idle_timeout, with a reply running
        brain.release.set()
        kinds = [(await receive(ws))["type"] for _ in range(3)]
        assert kinds == ["start", "chunk", "final"]


async def test_sessions_per_connection_are_capped(nursery: trio.Nursery) -> None:
    server = await serve(nursery, max_sessions=2)
    async with open_websocket_url(url(server), extra_headers=HEADERS) as ws:
        for name in ("a", "b"):
            await send(ws, "start", session=name)
            assert (await receive(ws))["type"] == "connected"
        await send(ws, "start", session="c")
        refused = await receive(ws)
        assert refused["type"] == "error" and "2 sessions" in refused["metadata"]["error"]
        await send(ws, "start", session="a")  # restarting a held session is no new one
        assert (await receive(ws))["type"] == "connected"
        await send(ws, "stop", session="b")
        await send(ws, "start", session="c")
        assert (await receive(ws))["type"] == "connected"


# --- audio and memory ---------------------------------------------------------------------------------------


async def test_invoke_audio_over_a_minute_is_refused(nursery: trio.Nursery) -> None:
    brain = HeldBrain()
    server = await serve(nursery, brain)
    async with open_websocket_url(url(server), extra_headers=HEADERS) as ws:
        await send(ws, "start")
        await receive(ws)
        await send(ws, "invoke", audio_data=pcm_b64(61))
        refused = await receive(ws)
        assert refused["type"] == "error" and "longer than 60 s" in refused["metadata"]["error"]
        assert brain.started == 0 and server.audio_in_flight == 0
        await send(ws, "invoke", audio_data=pcm_b64(59))
        assert (await receive(ws))["type"] == "accepted"


async def test_a_frame_beyond_the_cap_closes_that_connection_only(nursery: trio.Nursery) -> None:
    server = await serve(nursery)
    async with open_websocket_url(url(server), extra_headers=HEADERS) as ws:
        await send(ws, "start")
        await receive(ws)
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await send(ws, "invoke", audio_data=pcm_b64(80))  # 3.4 MB of base64
            await ws.get_message()
        assert closed.value.reason.code == 1009  # message too big
    async with open_websocket_url(url(server), extra_headers=HEADERS) as ws:
        await send(ws, "start")
        assert (await receive(ws))["type"] == "connected"


async def test_audio_in_flight_is_budgeted(nursery: trio.Nursery) -> None:
    brain = HeldBrain()
    server = await serve(nursery, brain, max_audio_in_flight=1024 * 1024)
    async with open_websocket_url(url(server), extra_headers=HEADERS) as ws:
        for name in ("a", "b"):
            await send(ws, "start", session=name)
            await receive(ws)
        await send(ws, "invoke", session="a", audio_data=pcm_b64(20))  # 640 kB
        assert (await receive(ws))["type"] == "accepted"
        await send(ws, "invoke", session="b", audio_data=pcm_b64(20))
        refused = await receive(ws)
        assert refused["type"] == "error" and "too much audio" in refused["metadata"]["error"]
        assert server.audio_in_flight == 20 * CAPTURE_RATE * 2
        brain.release.set()
        kinds = [(await receive(ws))["type"] for _ in range(3)]
        assert kinds == ["start", "chunk", "final"]
        with trio.fail_after(10):
            while server.audio_in_flight:
                await trio.sleep(0.01)
        await send(ws, "invoke", session="b", audio_data=pcm_b64(20))
        assert (await receive(ws))["type"] == "accepted"


# --- bad frames --------------------------------------------------------------------------------------------


async def test_deeply_nested_json_is_a_bad_frame_like_any_other(nursery: trio.Nursery) -> None:
    server = await serve(nursery)
    async with open_websocket_url(url(server), extra_headers=HEADERS) as ws:
        for depth_bomb in ("[" * 100_000, '{"a":' * 100_000):
            await ws.send_message(depth_bomb)
            answer = await receive(ws)
            assert answer["type"] == "error" and "nested too deeply" in answer["metadata"]["error"]
        await send(ws, "start")  # the connection is still served
        assert (await receive(ws))["type"] == "connected"
