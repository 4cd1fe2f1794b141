"""AIAvatarKit 0.9.2's own ``AIAvatarHttpClient`` against ``appliance serve``'s HTTP API ([server] http_port),
as a real process with the cloud pipeline on the fake cloud."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from peer import API_KEY, HERE, PEER_PYTHON, REPO
from PIL import Image

from conftest import SENTENCES
from tests.fakes.cloud import FakeCloud


@asynccontextmanager
async def serve_http(cloud: FakeCloud, tmp_path: Path, extra: str = "") -> AsyncIterator[tuple[str, list[str]]]:
    """``appliance serve`` with its HTTP API; yields the /chat URL and (after it stopped) what it logged."""
    config = tmp_path / "serve.toml"
    config.write_text(
        f'[stt]\nbase_url = "{cloud.url}/v1"\n[llm]\nbase_url = "{cloud.url}/v1"\nmodel = "fake"\n'
        f'[tts]\nbase_url = "{cloud.url}/v1"\n[server]\nhost = "127.0.0.1"\nport = 0\nhttp_port = 0\n{extra}'
    )
    env = {**os.environ, "OPENAI_API_KEY": "test-key", "APPLIANCE_SERVER__API_KEY": API_KEY}
    log: list[str] = []
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "appliance", "--config", str(config), "serve", "--log-level", "INFO"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    seen = b""
    try:
        assert process.stdout is not None
        with trio.fail_after(30):
            while not (match := re.search(rb"http://127\.0\.0\.1:(\d+)/chat", seen)):
                data = await process.stdout.receive_some(4096)
                assert data, f"appliance serve exited: {seen.decode(errors='replace')}"
                seen += data
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                nonlocal seen
                assert process.stdout is not None
                while data := await process.stdout.receive_some(4096):
                    seen += data

            nursery.start_soon(drain)
            yield f"http://127.0.0.1:{int(match.group(1))}/chat", log
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        log.extend(seen.decode(errors="replace").splitlines())


async def run_http_client(url: str, script: list[dict[str, Any]]) -> dict[str, Any]:
    args = [str(PEER_PYTHON), str(HERE / "peer_http_client.py"), "--url", url, "--api-key", API_KEY]
    with trio.fail_after(60):
        done = await trio.run_process(
            [*args, "--script", json.dumps(script)], capture_stdout=True, capture_stderr=True, check=False
        )
    if done.returncode != 0:
        raise AssertionError(f"peer client exited {done.returncode}: {done.stderr.decode(errors='replace')[-3000:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


async def test_its_http_client_parses_every_frame_shows_faces_and_plays_audio(cloud: FakeCloud, tmp_path: Path) -> None:
    async with serve_http(cloud, tmp_path) as (url, log):
        saw = await run_http_client(
            url, [{"text": "Hello"}, {"audio_seconds": 1.0}, {"text": "Bye", "api_key": "wrong"}]
        )
    assert [r["outcome"] for r in saw["results"]] == ["ok", "ok", "HTTPStatusError"]
    assert "401" in saw["results"][2]["message"]
    kinds = [s["type"] for s in saw["seen"]]
    assert kinds.count("start") == 2 and kinds.count("final") == 2 and "error" not in kinds
    starts = [s["metadata"]["request_text"] for s in saw["seen"] if s["type"] == "start"]
    assert starts[0] == "Hello" and starts[1]  # the fake cloud's STT heard the tone
    chunks = [s["voice_text"] for s in saw["seen"] if s["type"] == "chunk" and s["voice_text"]]
    assert chunks == SENTENCES * 2
    assert saw["faces"] == ["joy"] * 2 and saw["animations"] == ["wave"] * 2
    assert saw["played_bytes"] > 0  # its player played our WAV sentences
    assert not [line for line in log if "Traceback" in line or "ERROR" in line], "\n".join(log)


async def test_its_http_client_raises_on_our_error_frame(cloud: FakeCloud, tmp_path: Path) -> None:
    cloud.llm.status = 400  # every LLM request refused: the reply ends with an error frame
    async with serve_http(cloud, tmp_path) as (url, _log):
        saw = await run_http_client(url, [{"text": "Hello"}])
    assert saw["results"][0]["outcome"] == "AIAvatarException"


async def test_its_http_client_answers_our_vision_frame_with_the_picture_and_the_model_sees_it(
    cloud: FakeCloud, tmp_path: Path
) -> None:
    cloud.reply = "Let me see. [vision:camera]"
    cloud.image_reply = "[face:joy] A red square!"
    still = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(still, "PNG")  # what a client's camera hook might hand over
    picture = "data:image/png;base64," + base64.b64encode(still.getvalue()).decode()
    async with serve_http(cloud, tmp_path) as (url, log):
        saw = await run_http_client(url, [{"text": "What am I holding?", "look": picture}])
    assert saw["results"] == [{"outcome": "ok"}]
    kinds = [s["type"] for s in saw["seen"]]
    assert kinds == ["start", "chunk", "chunk", "vision", "start", "chunk", "final"], kinds
    assert saw["looks"] == ["camera"]  # its get_image_url hook was asked for the camera's picture
    assert [s["voice_text"] for s in saw["seen"] if s["type"] == "chunk"][-1] == "A red square!"
    sent = cloud.bodies("/v1/chat/completions")[-1]["messages"][-1]["content"]
    assert {"type": "image_url", "image_url": {"url": picture}} in [
        {"type": p["type"], "image_url": {"url": p["image_url"]["url"]}} for p in sent if p["type"] == "image_url"
    ]
    assert not [line for line in log if "Traceback" in line or "ERROR" in line], "\n".join(log)


async def test_its_http_client_takes_our_tool_call_frames(cloud: FakeCloud, tmp_path: Path) -> None:
    cloud.tool_call = ("get_weather", {"city": "Tokyo"})
    tool = '[[llm.tools]]\nfunction = "tests.test_providers_agent:get_weather"\n'
    async with serve_http(cloud, tmp_path, extra=tool) as (url, log):
        saw = await run_http_client(url, [{"text": "Weather in Tokyo?"}])
    assert saw["results"] == [{"outcome": "ok"}]
    calls = [s["metadata"]["tool_call"] for s in saw["seen"] if s["type"] == "tool_call"]
    assert [c["name"] for c in calls] == ["get_weather", "get_weather"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Tokyo"} and "result" not in calls[0]
    assert calls[1]["result"] == {"data": {"city": "Tokyo", "days": 1, "sky": "sunny"}, "is_final": True}
    assert [s["type"] for s in saw["seen"]][-1] == "final"
    assert not [line for line in log if "Traceback" in line or "ERROR" in line], "\n".join(log)
