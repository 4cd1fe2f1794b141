"""(b) AIAvatarKit 0.9.2's own client (its models, receive loop, face controller and audio player; PortAudio
stood in for) against ``appliance serve`` as a real process, with the cloud pipeline on the fake cloud."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from peer import API_KEY, REPO, run_peer_client

from conftest import SENTENCES
from tests.fakes.cloud import FakeCloud
from tests.http_serve_helpers import serve_config, serve_url


@asynccontextmanager
async def appliance_serve(
    cloud: FakeCloud, tmp_path: Path, *, pcm: bool = False, workers: int = 1
) -> AsyncIterator[tuple[str, list[str]]]:
    """``appliance serve`` in its own process (``workers`` of them on one port); yields its URL and (after it
    stopped) the lines it logged."""
    config = tmp_path / "serve.toml"
    config.write_text(serve_config(cloud.url, f"pcm = {str(pcm).lower()}\nworkers = {workers}\n"))
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
        url, seen = await serve_url(process)
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                nonlocal seen
                assert process.stdout is not None
                while data := await process.stdout.receive_some(4096):
                    seen += data

            nursery.start_soon(drain)
            yield url, log
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        log.extend(seen.decode(errors="replace").splitlines())


def assert_clean(log: list[str]) -> None:
    assert not [line for line in log if "Traceback" in line or "ERROR" in line], "\n".join(log)


async def test_its_client_parses_every_frame_shows_faces_and_plays_audio(cloud: FakeCloud, tmp_path: Path) -> None:
    async with appliance_serve(cloud, tmp_path) as (url, log):
        saw = await run_peer_client(url, [{"text": "Hello"}, {"audio_seconds": 1.0}, {"text": "Bye"}])
    assert saw["parse_errors"] == []
    assert [r["type"] for r in saw["results"]] == ["final", "final", "final"], saw["results"]
    assert {r["voice_text"] for r in saw["results"]} == {" ".join(SENTENCES)}  # what its client prints
    chunks = [s for s in saw["seen"] if s["type"] == "chunk" and s["voice_text"]]
    assert [c["voice_text"] for c in chunks] == SENTENCES * 3
    assert saw["faces"] == ["joy"] * 3 and saw["animations"] == ["wave"] * 3
    assert saw["played_bytes"] > 0 and saw["streams"][0]["rate"] == 24_000  # its AudioPlayer wrote our WAVs
    assert_clean(log)


async def test_its_client_plays_pcm_mode(cloud: FakeCloud, tmp_path: Path) -> None:
    async with appliance_serve(cloud, tmp_path, pcm=True) as (url, log):
        saw = await run_peer_client(url, [{"text": "Hello"}])
    assert saw["parse_errors"] == [] and [r["type"] for r in saw["results"]] == ["final"]
    assert saw["faces"] == ["joy"] and saw["animations"] == ["wave"]
    seconds = sum(max(0.05, len(s) * 0.004) for s in SENTENCES)
    assert abs(saw["played_bytes"] - seconds * 24_000 * 2) < 24_000 * 2 * 0.01  # every PCM frame reached it
    assert_clean(log)


async def test_its_client_plays_a_sentence_while_it_is_still_being_synthesized(
    cloud: FakeCloud, tmp_path: Path
) -> None:
    """PCM mode streams each sentence as its speech arrives: the real client's player writes the first
    sentence's audio before the cloud has sent the end of it, and every byte is played."""
    cloud.seconds_per_char = 0.03  # about half a second of speech a sentence...
    cloud.tts.token_delay = 0.2  # ...in 100 ms pieces, 200 ms apart: a synthesis that takes its time (a second)
    async with appliance_serve(cloud, tmp_path, pcm=True) as (url, log):
        saw = await run_peer_client(url, [{"text": "Hello"}])
    assert saw["parse_errors"] == [] and [r["type"] for r in saw["results"]] == ["final"]
    first = next(r for r in cloud.requests if r.path == "/v1/audio/speech" and r.body["input"] == SENTENCES[0])
    assert first.finished_at is not None and len(first.sent_at) >= 5
    assert saw["writes"] and saw["writes"][0][0] < first.finished_at  # played before its synthesis ended
    seconds = sum(len(s) * 0.03 for s in SENTENCES)
    assert abs(saw["played_bytes"] - seconds * 24_000 * 2) < 24_000 * 2 * 0.01  # and nothing was lost
    assert_clean(log)


async def test_nothing_heard_is_canceled_not_an_error(cloud: FakeCloud, tmp_path: Path) -> None:
    cloud.transcript = ""
    async with appliance_serve(cloud, tmp_path) as (url, log):
        saw = await run_peer_client(url, [{"audio_seconds": 1.0}, {"text": "still there?"}])
    assert [r["type"] for r in saw["results"]] == ["canceled", "final"]  # its client lives on after it
    assert saw["parse_errors"] == []
    assert_clean(log)


async def test_failed_speech_recognition_is_canceled_not_an_error(cloud: FakeCloud, tmp_path: Path) -> None:
    cloud.stt.status = 500
    async with appliance_serve(cloud, tmp_path) as (url, log):
        saw = await run_peer_client(url, [{"audio_seconds": 1.0}, {"text": "still there?"}])
    assert [r["type"] for r in saw["results"]] == ["canceled", "final"]
    assert saw["parse_errors"] == []


async def test_a_client_leaving_mid_reply_leaves_no_traceback(cloud: FakeCloud, tmp_path: Path) -> None:
    cloud.llm.token_delay = 0.05
    async with appliance_serve(cloud, tmp_path) as (url, log):
        for how in ("close", "drop"):
            saw = await run_peer_client(url, [{"text": "Tell me a long story", "hang_up": how}])
            assert saw["results"] == [{"type": "hung-up"}]
        saw = await run_peer_client(url, [{"text": "Hello"}])  # and the server serves the next robot
        assert [r["type"] for r in saw["results"]] == ["final"]
    assert_clean(log)


async def test_its_client_against_two_workers_continues_each_conversation(cloud: FakeCloud, tmp_path: Path) -> None:
    """``[server] workers = 2``: two robots at once, each on three connections in turn (the kernel spreads them
    over the workers), each naming its conversation by AIAvatarKit's context_id: every frame parses, every
    sentence plays, and each connection's turn is asked with the robot's earlier turns, whichever worker had them.
    """
    results: dict[str, list[dict[str, object]]] = {"a": [], "b": []}

    async def robot(name: str, url: str) -> None:
        for n in range(3):
            saw = await run_peer_client(url, [{"text": f"{name}{n}"}], context=f"robot-{name}")
            results[name].append(saw)

    async with appliance_serve(cloud, tmp_path, pcm=True, workers=2) as (url, log):
        async with trio.open_nursery() as nursery:
            for name in results:
                nursery.start_soon(robot, name, url)
    assert sum("serving the AIAvatarKit protocol" in line for line in log) == 2  # two workers served
    for name, runs in results.items():
        for saw in runs:
            assert saw["parse_errors"] == [] and [r["type"] for r in saw["results"]] == ["final"]  # type: ignore[index]
            assert saw["faces"] == ["joy"] and saw["played_bytes"] > 0  # type: ignore[index]
        asked = [b for b in cloud.bodies("/v1/chat/completions") if b["messages"][-1]["content"] == f"{name}2"]
        users = [m["content"] for m in asked[0]["messages"] if m["role"] == "user"]
        assert users == [f"{name}0", f"{name}1", f"{name}2"]
    assert_clean(log)
