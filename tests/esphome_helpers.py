"""aioesphomeapi — the client Home Assistant itself uses — on its own asyncio loop in a thread, driven from
Trio tests; plus a tiny HTTP server on 127.0.0.1 that serves a TTS WAV, and an appliance with the ESPHome
server on a free loopback port."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import trio

from appliance.audio.base import AudioClip
from appliance.audio.convert import encode_wav
from appliance.audio.playback import MemorySink
from appliance.config import AppConfig
from tests.harness import EventLog, running_appliance

KEY = "px7tsbK3C7bpXHr2OevEV2ZMg/FrNBw2+O2pNPbedtA="  # a test key (base64 of 32 bytes)
OTHER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def esphome_config(**home_assistant: Any) -> AppConfig:
    section = {"esphome": True, "host": "127.0.0.1", "port": 0, "mdns": False, "name": "robot"}
    section.update(home_assistant)
    return AppConfig.model_validate(
        {
            "home_assistant": section,
            "conversation": {"brains": ["home_assistant", "offline"]},
            "audio": {"input": "simulated", "output": "simulated", "simulated_speech_after": None},
            "gpio": {"pin_factory": "mock"},
            "log": {"status_line": "off"},
            "failover": {"health_interval": 0},
        }
    )


@asynccontextmanager
async def esphome_appliance(
    *, realtime: bool = False, **home_assistant: Any
) -> AsyncIterator[tuple[Any, EventLog, Any, MemorySink]]:
    """A running appliance with the ESPHome server; yields (app, event log, the server, the sink)."""
    sink = MemorySink(sample_rate=16_000, realtime=realtime)
    async with running_appliance(esphome_config(**home_assistant), sink=sink) as (app, log):
        yield app, log, server_of(app), sink


def server_of(app: Any) -> Any:
    service = app.supervisor.records["esphome"].service
    return getattr(service, "inner", service)


class HomeAssistant:
    """One aioesphomeapi ``APIClient`` on a private asyncio loop."""

    def __init__(self, port: int, psk: str | None = None) -> None:
        self.port = port
        self.psk = psk
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="aioesphomeapi", daemon=True)
        self.thread.start()
        self.client: Any = None

    async def run(self, make: Callable[[], Awaitable[Any]], timeout: float = 15) -> Any:
        future = asyncio.run_coroutine_threadsafe(make(), self.loop)
        return await trio.to_thread.run_sync(future.result, timeout)

    async def call_soon(self, fn: Callable[[], Any]) -> Any:
        async def wrapped() -> Any:
            return fn()

        return await self.run(wrapped)

    async def connect(self) -> Any:
        from aioesphomeapi import APIClient

        async def go() -> Any:
            self.client = APIClient("127.0.0.1", self.port, None, noise_psk=self.psk, client_info="tests")
            await self.client.connect(login=False)
            return self.client

        return await self.run(go)

    async def close(self) -> None:
        if self.client is not None:
            try:
                await self.run(lambda: self.client.disconnect(), timeout=5)
            except Exception:
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        await trio.to_thread.run_sync(self.thread.join, 5)


@asynccontextmanager
async def home_assistant(port: int, psk: str | None = None) -> AsyncIterator[HomeAssistant]:
    ha = HomeAssistant(port, psk)
    try:
        await ha.connect()
        yield ha
    finally:
        await ha.close()


def tone_wav(seconds: float = 0.5, rate: int = 16_000) -> tuple[bytes, AudioClip]:
    t = np.arange(int(seconds * rate)) / rate
    clip = AudioClip((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16), rate)
    return encode_wav(clip), clip


class WavServer:
    """Serves ``/tts.wav`` (and a 404 for anything else) on 127.0.0.1, in a thread; counts requests."""

    def __init__(self, body: bytes) -> None:
        outer = self
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                if self.path.endswith(".wav"):
                    self.send_response(200)
                    self.send_header("Content-Type", "audio/wav")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WavServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
