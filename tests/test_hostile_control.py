"""The control API against hostile clients on 127.0.0.1 (issue 15): crashing a subsystem through one request,
stalling it with bodies that never come, cross-site requests, setting or reading secrets, sending the cloud
keys elsewhere, patches that break the next start, lax bodies. Each test is bounded in requests and time.
"""

from __future__ import annotations

import io
import os
import wave
from typing import Any

import httpx
import numpy as np
import pytest
import trio
import trio.lowlevel

from appliance.audio.base import AudioStream
from appliance.control.client import parse_sse
from appliance.speaker import TappedBrain
from appliance.turns import BrainOutput, ReplyChunk, Transcript, TurnRequest
from tests.fakes.control_robot import TOKEN, Robot, running_robot

# --- 1. one request must not take a subsystem down ---------------------------------------------------------


class StreamingBrain:
    """Speaks two sentences as ``AudioStream``s, the way the cloud brain's synthesizers deliver them."""

    name = "streaming"

    async def reply(self, req: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            await out.send(Transcript(req.utterance.text or ""))
            for index, sentence in enumerate(("One.", "Two.")):
                feed, stream = AudioStream.open(24_000)
                await out.send(ReplyChunk(sentence, sentence, (), stream))
                async with feed:
                    for _ in range(3):
                        await feed.send(np.full(2400, 1000 * (index + 1), dtype=np.int16))
                        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        return None


async def converse(api: httpx.AsyncClient, body: dict[str, Any]) -> list[tuple[str, Any]]:
    lines: list[str] = []
    with trio.fail_after(20):  # a hang guard, not a timing check
        async with api.stream("POST", "/v1/conversation", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                lines.append(line)
    return list(parse_sse(iter(lines)))


def wav_samples(data: str) -> np.ndarray:
    import base64

    with wave.open(io.BytesIO(base64.b64decode(data))) as wav:
        assert wav.getframerate() == 24_000
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)


async def test_streamed_speech_comes_back_and_no_request_kills_the_conversation(tmp_path):
    async with running_robot(tmp_path, brain=StreamingBrain()) as robot, robot.client() as api:
        for _ in range(6):  # the fifth failure used to end the process
            events = await converse(api, {"text": "hi", "audio": True})
            chunks = [data for kind, data in events if kind == "chunk"]
            assert [c["text"] for c in chunks] == ["One.", "Two."]
            for index, chunk in enumerate(chunks):
                samples = wav_samples(chunk["audio"])
                assert len(samples) == 7200 and set(samples.tolist()) == {1000 * (index + 1)}
            assert events[-1][0] == "finished" and events[-1][1]["outcome"] == "done"
        record = robot.appliance.supervisor.records["conversation"]
        assert record.status == "running" and record.restarts == 0
        # Playback got the speech too (the copy the tap read did not take it from the speaker).
        assert np.count_nonzero(robot.sink.audio.samples) >= 6 * 2 * 7200 // 2


async def test_a_failing_client_tap_ends_its_stream_not_the_reply():
    seen: list[Exception] = []

    def tap(item: Any) -> None:
        if isinstance(item, ReplyChunk):
            raise ValueError("the client's problem")

    brain = TappedBrain(StreamingBrain(), tap, copy_audio=True, on_error=seen.append)
    send, receive = trio.open_memory_channel[Any](10)
    request = TurnRequest("t1", _utterance("hi"), (), "c1", {})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(brain.reply, request, send)
        got = []
        async with receive:
            async for item in receive:
                if isinstance(item, ReplyChunk):
                    got.append((await item.audio.read_all()).samples.size)
    assert got == [7200, 7200]  # playback still gets every sentence whole
    assert len(seen) == 1 and isinstance(seen[0], ValueError)


def _utterance(text: str) -> Any:
    from appliance.turns import Utterance

    return Utterance(text=text, source="api")


# --- 2. bodies that never come -------------------------------------------------------------------------------


async def stalled_request(robot: Robot, token: str | None) -> trio.SocketStream:
    port = int(robot.url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    await stream.send_all(
        (
            f"POST /v1/say HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n"
        ).encode()
    )
    return stream


async def read_status(stream: trio.SocketStream) -> int:
    data = b""
    with trio.fail_after(15):  # a hang guard, not a timing check
        while b"\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


async def test_stalled_bodies_neither_hold_health_and_status_nor_skip_auth(tmp_path):
    async with running_robot(tmp_path) as robot, robot.client() as api:
        ctx = robot.appliance.control.ctx
        ctx.limits = ctx.limits.model_copy(update={"body_timeout": 1.0})
        strangers = [await stalled_request(robot, None) for _ in range(2)]
        for stranger in strangers:  # refused from the headers alone, before any body
            assert await read_status(stranger) == 401
        owners = [await stalled_request(robot, TOKEN) for _ in range(4)]  # more than the turnstile's slots
        with trio.fail_after(5):  # a hang guard: these used to wait for the stalled bodies forever
            for _ in range(3):
                assert (await api.get("/v1/health")).status_code == 200
                assert (await api.get("/v1/status")).status_code == 200
        for owner in owners:
            assert await read_status(owner) == 408
        for stream in strangers + owners:
            await stream.aclose()
        metrics = (await api.get("/v1/metrics")).text  # refusals made before any route are counted too
        assert 'appliance_control_responses_total{code="401"} 2' in metrics
        assert 'appliance_control_responses_total{code="408"} 4' in metrics


# --- 3. cross-site requests ----------------------------------------------------------------------------------

STATE_CHANGING = [
    ("POST", "/v1/mute", {}),
    ("POST", "/v1/unmute", {}),
    ("POST", "/v1/listener/start", {}),
    ("POST", "/v1/listener/stop", {}),
    ("POST", "/v1/turn/cancel", {}),
    ("POST", "/v1/say", {"text": "hello"}),
    ("POST", "/v1/volume", {"volume": 0.5}),
    ("PATCH", "/v1/config", {"log": {"level": "DEBUG"}}),
    ("DELETE", "/v1/histories/abc", None),
]


@pytest.fixture
async def open_robot(tmp_path):
    async with running_robot(tmp_path, token=None) as robot:
        yield robot


async def test_cross_site_and_non_json_requests_are_refused(open_robot: Robot):
    robot = open_robot
    before = robot.config_path.read_bytes()
    async with robot.client(token=None) as api:
        for method, path, body in STATE_CHANGING:
            for headers in (
                {"Origin": "http://evil.example"},
                {"Origin": "null"},
                {"Sec-Fetch-Site": "cross-site"},
                {"Sec-Fetch-Site": "same-site"},
            ):
                response = await api.request(method, path, json=body, headers=headers)
                assert response.status_code == 403, (method, path, headers)
            if method == "DELETE":
                continue
            for content, kind in (
                (b"", None),
                (b"", "text/plain"),
                (b"{}", "text/plain"),
                (b"text=hi", "application/x-www-form-urlencoded"),
            ):
                headers = {"Content-Type": kind} if kind else {}
                response = await api.request(method, path, content=content, headers=headers)
                assert response.status_code == 415, (method, path, kind)
        status = (await api.get("/v1/status")).json()
        assert status["muted"] is False and status["queued_says"] == 0
        assert robot.config_path.read_bytes() == before
        # The robot's own page (same origin) and non-browser clients are served.
        own = {"Origin": robot.url, "Sec-Fetch-Site": "same-origin"}
        assert (await api.post("/v1/mute", json={}, headers=own)).json() == {"muted": True}
        assert (await api.post("/v1/unmute", json={})).json() == {"muted": False}


# --- 4. and 5. secrets, and where they are sent ------------------------------------------------------------

SECRETS_IN_FILE = """
[llm]
base_url = "http://robot:pw-secret@127.0.0.1:9/v1?key=query-secret&model=x"
[[llm.mcp_servers]]
name = "home"
url = "http://127.0.0.1:9/mcp"
headers = { Authorization = "Bearer mcp-secret" }
[[llm.tools]]
name = "lamp"
url = "http://127.0.0.1:9/lamp"
headers = { "X-Api-Key" = "tool-secret" }
[tts.voices.ja]
provider = "http"
url = "http://127.0.0.1:9/tts?token=voice-token-secret"
headers = { Cookie = "session=cookie-secret" }
"""
SECRET_VALUES = ["pw-secret", "query-secret", "mcp-secret", "tool-secret", "voice-token-secret", "cookie-secret", TOKEN]


async def test_every_secret_in_the_tree_is_redacted(tmp_path):
    async with running_robot(tmp_path, extra=SECRETS_IN_FILE) as robot, robot.client() as api:
        shown = (await api.get("/v1/config")).text
        patched = await api.patch("/v1/config", json={"log": {"level": "DEBUG"}})
        assert patched.status_code == 200
        for text in (shown, patched.text):
            for secret in SECRET_VALUES:
                assert secret not in text
        assert "**********" in shown and "127.0.0.1:9/mcp" in shown  # the rest is still shown
        assert (await api.get("/v1/config")).json()["llm"]["max_tokens"] == 512  # no "token" by a substring


LOCKED_PATCHES: list[dict[str, Any]] = [
    # secrets, at any depth
    {
        "llm": {
            "mcp_servers": [
                {"name": "x", "url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer stolen"}}
            ]
        }
    },
    {"llm": {"tools": [{"name": "t", "url": "http://127.0.0.1:9/t", "headers": {"X-Key": "k"}}]}},
    {"llm": {"api_key": "sk-new"}},
    {"tts": {"voices": {"en": {"provider": "openai", "api_key": "sk-new"}}}},
    {"control": {"token": "a-new-token-0123456789"}},
    {"remote": {"api_key": None}},
    # where a credential is sent
    {"stt": {"base_url": "http://127.0.0.1:9/v1"}},
    {"llm": {"base_url": "http://127.0.0.1:9/v1"}},
    {"tts": {"base_url": "http://127.0.0.1:9/v1"}},
    {"tts": {"voices": {"en": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}}}},
    {"stt": {"provider": "azure", "region": "evil.example#"}},
    {"remote": {"url": "ws://127.0.0.1:9/ws"}},
    {"llm": {"mcp_servers": [{"name": "x", "url": "http://127.0.0.1:9/mcp"}]}},
    # code that could read the keys from the environment
    {"llm": {"mcp_servers": [{"name": "x", "command": ["sh", "-c", "env"]}]}},
    {"stt": {"postprocess": "os:system"}},
    {"llm": {"on_finish": "os:system"}},
    {"llm": {"tools": [{"function": "os:system"}]}},
    {"response_hooks": {"on_start": ["os:system"]}},
    {"response_hooks": {"on_error": ["subprocess:run"]}},
    # where the conversation is sent, and what the model's tools may reach
    {"tracing": {"enabled": True, "endpoint": "http://127.0.0.1:9/v1/traces"}},
    {"tracing": {"headers": {"Authorization": "Basic x"}}},
    {"llm": {"tools": [{"builtin": "read_web_page", "allow_private": True}]}},
    {"llm": {"tools": [{"builtin": "read_web_page", "allow_networks": ["192.168.0.0/16"]}]}},
    {"llm": {"tools": [{"builtin": "generate_image", "base_url": "http://127.0.0.1:9"}]}},
]


async def test_secrets_endpoints_and_code_cannot_be_patched(tmp_path):
    async with running_robot(tmp_path) as robot, robot.client() as api:
        before = robot.config_path.read_bytes()
        for patch in LOCKED_PATCHES:
            response = await api.patch("/v1/config", json=patch)
            assert response.status_code == 422, patch
            assert "through the API" in response.text
        assert robot.config_path.read_bytes() == before
        assert not robot.config_path.with_name("appliance.toml.prev").exists()


async def test_a_provider_cannot_be_pointed_at_an_endpoint_the_file_names(tmp_path):
    extra = '[stt]\nbase_url = "http://127.0.0.1:9/v1"\n'
    async with running_robot(tmp_path, extra=extra) as robot, robot.client() as api:
        response = await api.patch("/v1/config", json={"stt": {"provider": "google"}})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["stt", "provider"]
        response = await api.patch("/v1/config", json={"stt": {"language": "ja"}, "llm": {"max_tokens": 256}})
        assert response.status_code == 200  # the rest may change
        assert response.json()["config"]["llm"]["max_tokens"] == 256


# --- 6. patches that would break the next start -------------------------------------------------------------


async def test_a_patch_that_breaks_the_next_start_is_refused(tmp_path):
    async with running_robot(tmp_path, token=None) as robot, robot.client(token=None) as api:
        before = robot.config_path.read_bytes()
        for patch in (
            {"control": {"token_file": str(tmp_path / "nonexistent")}},
            {"control": {"host": "0.0.0.0"}},  # no token: the start would refuse the bind
            {"llm": {"camera": "file", "camera_image": str(tmp_path / "missing.png")}},
            {"tts": {"katakana_dictionary": str(tmp_path / "missing.json")}},
        ):
            response = await api.patch("/v1/config", json=patch)
            assert response.status_code == 422, patch
        assert robot.config_path.read_bytes() == before
        token_file = tmp_path / "token"
        token_file.write_text("a-good-token-0123456789\n")
        os.chmod(token_file, 0o644)
        refused = await api.patch("/v1/config", json={"control": {"token_file": str(token_file)}})
        assert refused.status_code == 422 and "chmod 600" in refused.text
        os.chmod(token_file, 0o600)
        accepted = await api.patch("/v1/config", json={"control": {"token_file": str(token_file)}})
        assert accepted.status_code == 200 and "control" in accepted.json()["restart_required"]


# --- 7. bodies as strict as the schema ----------------------------------------------------------------------


async def test_bodies_are_strict_and_the_schema_says_what_is_refused(tmp_path):
    async with running_robot(tmp_path) as robot, robot.client() as api:
        for path, body in (
            ("/v1/say", {"text": "hi", "interrupt": 0}),
            ("/v1/say", {"text": 5}),
            ("/v1/volume", {"volume": False}),
            ("/v1/volume", {"volume": "0.5"}),
            ("/v1/conversation", {"text": "hi", "audio": "yes"}),
            ("/v1/face", {"name": "joy", "duration": "5"}),
        ):
            assert (await api.post(path, json=body)).status_code == 422, body
        assert (await api.post("/v1/volume", json={"volume": 1})).status_code == 200  # an integer is a number
        schema = (await api.get("/openapi.json")).json()
        # {} is refused where the schema says so, and only there.
        assert (await api.patch("/v1/config", json={})).status_code == 422
        patch_body = schema["paths"]["/v1/config"]["patch"]["requestBody"]["content"]["application/json"]["schema"]
        assert patch_body.get("minProperties") == 1
        assert (await api.post("/v1/perform", json={})).status_code == 422
        perform = schema["components"]["schemas"]["PerformRequest"]
        assert {tuple(option["required"]) for option in perform["anyOf"]} == {("text",), ("face",), ("animation",)}
        mute_body = schema["paths"]["/v1/mute"]["post"]["requestBody"]
        assert mute_body["required"] is True
        # 405 names every method the path takes.
        for method, path, allowed in (
            ("PUT", "/v1/mute", "POST"),
            ("POST", "/v1/histories/abc", "DELETE, GET"),
            ("DELETE", "/v1/config", "GET, PATCH"),
        ):
            response = await api.request(method, path, json={})
            assert response.status_code == 405 and response.headers["allow"] == allowed, (method, path)


def test_secrets_paths_are_found_in_lists_and_tables():
    from appliance.control.config_patch import locked_paths

    found = locked_paths(
        {
            "llm": {"mcp_servers": [{"name": "a"}, {"headers": {"X": "y"}}], "model": "m"},
            "tts": {"voices": {"ja": {"url": "http://x"}}},
        }
    )
    assert found == [("llm.mcp_servers.1.headers", "secret"), ("tts.voices.ja.url", "endpoint")]


def test_redaction_of_urls_keeps_what_is_not_secret():
    from appliance.settings.secrets import redact

    data = {
        "a": "http://u:p@h:1/x?key=k&model=m",
        "b": "plain text with key=k",
        "token_file": "/x",
        "nested": [{"api_key": "s", "api_key_file": "/k"}],
    }
    assert redact(data) == {
        "a": "http://u:**********@h:1/x?key=**********&model=m",
        "b": "plain text with key=k",
        "token_file": "/x",
        "nested": [{"api_key": "**********", "api_key_file": "/k"}],
    }
