"""A brain and a server for the HTTP API's tests (``tests/test_serve_http*.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import trio

from appliance.audio.base import AudioClip
from appliance.conversation.tags import extract_tags
from appliance.errors import ProviderUnavailable
from appliance.server.http_api import HttpAvatarServer
from appliance.settings.brains import ServerConfig
from appliance.turns import BrainOutput, ReplyChunk, Transcript, TurnRequest
from tests.fakes.aiavatar import tone

KEY = "secret-key-for-http"
AUTH = {"Authorization": f"Bearer {KEY}"}


class FakeSTT:
    async def transcribe(self, audio: AudioClip, language: str | None = None) -> str:
        if audio.sample_rate != 16_000:
            raise AssertionError("an utterance must be 16 kHz")
        return f"audio of {audio.duration:.1f} s"


class FakeTTS:
    async def synthesize(self, text: str) -> AudioClip:
        if "fail" in text:
            raise ProviderUnavailable("fake-tts", "HTTP 500")
        return tone(0.1)


class EchoBrain:
    """Says back what it heard in two sentences (a face, then an animation); ``delay`` before each."""

    name = "echo"

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.histories: list[tuple[Any, ...]] = []
        self.cancelled = 0
        self.finished = 0
        self.stt = FakeSTT()
        self.tts = FakeTTS()

    async def reply(self, req: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            self.histories.append(req.history)
            if self.fail:
                raise ProviderUnavailable("fake-llm", "HTTP 500")
            text = req.utterance.text
            if text is None and req.utterance.audio is not None:
                text = await self.stt.transcribe(req.utterance.audio)
                await out.send(Transcript(text))
            try:
                for sentence in (f"[face:joy] Echo: {text}.", f"[animation:wave] Turn {len(req.history) // 2 + 1}."):
                    await trio.sleep(self.delay)
                    voice, tags = extract_tags(sentence)
                    await out.send(ReplyChunk(sentence, voice, tags, tone(0.1)))
            except trio.Cancelled:
                self.cancelled += 1
                raise
            self.finished += 1

    async def aclose(self) -> None:
        return None


async def serve_http(nursery: trio.Nursery, brain: Any = None, **config: object) -> HttpAvatarServer:
    values: dict[str, object] = {"host": "127.0.0.1", "port": 0, "http_port": 0, "api_key": KEY}
    values.update(config)
    server = HttpAvatarServer(brain or EchoBrain(), ServerConfig.model_validate(values))
    await nursery.start(server.run)
    return server


def base(server: HttpAvatarServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each ``data:`` line of a Server-Sent Events response, parsed."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield json.loads(line[5:].strip())


async def events(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with client.stream("POST", path, json=body, headers=AUTH) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [event async for event in sse(response)]


def serve_config(cloud_url: str, server: str = "") -> str:
    """An ``appliance serve`` config on the fake cloud at ``cloud_url``, with ``server`` lines added to [server]."""
    return (
        f'[stt]\nbase_url = "{cloud_url}/v1"\n[llm]\nbase_url = "{cloud_url}/v1"\nmodel = "fake"\n'
        f'[tts]\nbase_url = "{cloud_url}/v1"\n[server]\nhost = "127.0.0.1"\nport = 0\n{server}'
    )


async def start_serve(directory: Path, cloud_url: str, key: str, server: str = "") -> trio.Process:
    """``appliance serve`` on the fake cloud at ``cloud_url`` in a process of its own, its config (``server`` lines
    added to [server]) written in ``directory``, server API key ``key``, its log piped to stdout."""
    config = directory / "serve.toml"
    config.write_text(serve_config(cloud_url, server))
    env = {**os.environ, "OPENAI_API_KEY": "test-key", "APPLIANCE_SERVER__API_KEY": key}
    args = [sys.executable, "-m", "appliance", "--config", str(config), "serve", "--log-level", "INFO"]
    repo = Path(__file__).resolve().parent.parent
    return await trio.lowlevel.open_process(args, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def serve_url(process: trio.Process) -> tuple[str, bytes]:
    """The WebSocket URL ``appliance serve`` (a process, output piped) logs once it listens, and what it printed."""
    import re

    assert process.stdout is not None
    seen = b""
    with trio.fail_after(30):
        while not (match := re.search(rb"ws://127\.0\.0\.1:(\d+)/ws", seen)):
            data = await process.stdout.receive_some(4096)
            assert data, f"appliance serve exited: {seen.decode(errors='replace')}"
            seen += data
    return f"ws://127.0.0.1:{int(match.group(1))}/ws", seen
