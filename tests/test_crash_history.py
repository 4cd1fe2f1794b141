"""Nothing reported done is lost: the real process killed with SIGKILL right after a turn is reported
finished, in the middle of a reply, and before the brain answered; after a restart the history holds each
turn as far as it got (write-ahead journal, fsynced)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.fakes.cloud import FakeCloud, fake_cloud
from tests.test_control_api import collect_sse

REPO = Path(__file__).resolve().parent.parent
TOKEN = "crash-test-token-0123456789"
REPLY = "[face:joy] First sentence here. Second one follows. And a third to end."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def robot_env(cloud: FakeCloud, tmp_path: Path, port: int) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "OPENAI_API_KEY": "test-key",
        "APPLIANCE_CONVERSATION__BRAIN": "cloud",
        "APPLIANCE_STT__BASE_URL": f"{cloud.url}/v1",
        "APPLIANCE_LLM__BASE_URL": f"{cloud.url}/v1",
        "APPLIANCE_TTS__BASE_URL": f"{cloud.url}/v1",
        "APPLIANCE_AUDIO__INPUT": "simulated",
        "APPLIANCE_AUDIO__SIMULATED_SPEECH_AFTER": "never",
        "APPLIANCE_AUDIO__OUTPUT": "simulated",
        "APPLIANCE_GPIO__PIN_FACTORY": "mock",
        "APPLIANCE_LOG__STATUS_LINE": "off",
        "APPLIANCE_CONTROL__PORT": str(port),
        "APPLIANCE_CONTROL__TOKEN": TOKEN,
        "APPLIANCE_CONTROL__STATE_DIR": str(tmp_path / "state"),
    }


@asynccontextmanager
async def robot(cloud: FakeCloud, tmp_path: Path, port: int) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "appliance", "run"],
        env=robot_env(cloud, tmp_path, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as api:
            with trio.fail_after(60):
                while True:
                    try:
                        if (await api.get("/v1/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)
            yield process, api
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def turns_after_restart(cloud: FakeCloud, tmp_path: Path, port: int) -> list[dict[str, Any]]:
    async with robot(cloud, tmp_path, port) as (_, api):
        found = []
        for row in (await api.get("/v1/histories")).json()["histories"]:
            found += (await api.get(f"/v1/histories/{row['id']}")).json()["turns"]
        return found


async def test_a_turn_reported_finished_survives_a_kill_at_once(tmp_path: Path) -> None:
    port = free_port()
    async with fake_cloud(reply=REPLY) as cloud:
        said = []
        for n in range(3):
            async with robot(cloud, tmp_path, port) as (process, api):
                text = f"Remember number {n}"
                async with api.stream("POST", "/v1/conversation", json={"text": text}) as response:
                    events = await collect_sse(response, until="finished")
                    process.send_signal(signal.SIGKILL)  # the moment the client learns it is done
                assert events[-1][0] == "finished" and events[-1][1]["outcome"] == "done"
                said.append(text)
        turns = await turns_after_restart(cloud, tmp_path, port)
    kept = {t["heard"]: t for t in turns}
    assert sorted(kept) == sorted(said)
    for turn in kept.values():
        assert turn["outcome"] == "done" and turn["spoken"].startswith("[face:joy] First sentence here.")
        assert turn["brain"] == "cloud" and turn["timings"]["finished"] is not None


async def test_a_kill_mid_reply_keeps_what_was_heard_and_said_so_far(tmp_path: Path) -> None:
    port = free_port()
    async with fake_cloud(reply=REPLY) as cloud:
        cloud.llm.token_delay = 0.2  # the reply trickles in: the kill lands between sentences
        async with robot(cloud, tmp_path, port) as (process, api):
            async with api.stream("POST", "/v1/conversation", json={"text": "Tell me three things"}) as response:
                events = await collect_sse(response, until="speaking")
                process.send_signal(signal.SIGKILL)
        assert events[-1][0] == "speaking"
        cloud.llm.token_delay = 0.0
        turns = await turns_after_restart(cloud, tmp_path, port)
    (turn,) = turns
    assert turn["heard"] == "Tell me three things" and turn["outcome"] == "cut off"
    assert turn["spoken"].startswith("[face:joy] First sentence here.")
    assert "And a third" not in turn["spoken"]


async def test_a_kill_before_the_brain_answers_keeps_the_question(tmp_path: Path) -> None:
    port = free_port()
    async with fake_cloud(reply=REPLY) as cloud:
        cloud.llm.latency = 30.0  # the model never answers before the kill
        async with robot(cloud, tmp_path, port) as (process, api):
            async with api.stream("POST", "/v1/conversation", json={"text": "Are you there?"}) as response:
                await collect_sse(response, until="turn")
                with trio.fail_after(10):  # the request reached the model: the question was written before it
                    while not cloud.bodies("/v1/chat/completions"):
                        await trio.sleep(0.02)
                process.send_signal(signal.SIGKILL)
        cloud.llm.latency = 0.0
        turns = await turns_after_restart(cloud, tmp_path, port)
    (turn,) = turns
    assert turn["heard"] == "Are you there?" and turn["outcome"] == "cut off" and turn["spoken"] == ""


async def test_a_turn_interrupted_by_sigterm_is_recorded_as_interrupted(tmp_path: Path) -> None:
    """A clean stop mid-reply writes the turn's end (outcome interrupted, what was said): the journal's writer
    is stopped with everything else, so the turn's shielded ending writes it itself instead of waiting."""
    port = free_port()
    async with fake_cloud(reply=REPLY) as cloud:
        cloud.llm.token_delay = 0.2
        async with robot(cloud, tmp_path, port) as (process, api):
            async with api.stream("POST", "/v1/conversation", json={"text": "Tell me three things"}) as response:
                await collect_sse(response, until="speaking")
                process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await process.wait() == 0
        cloud.llm.token_delay = 0.0
        turns = await turns_after_restart(cloud, tmp_path, port)
    (turn,) = turns
    assert turn["heard"] == "Tell me three things" and turn["outcome"] == "interrupted"
    assert turn["spoken"].startswith("[face:joy] First sentence here.")
