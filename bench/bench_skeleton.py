"""Walking-skeleton figures: firmware overhead per turn, start → READY, idle memory, stop time.

The fake cloud runs in its own process with fixed latencies; the firmware's overhead is what the turn took,
from the moment the utterance is handed to the conversation (before the first byte goes up) to the first audio
block at the sink, minus the waits the fake was told to make. Nothing the fake measured about itself is
subtracted, so its own work counts against us; the breakdown shows which share is whose.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio
import trio.lowlevel

from appliance.audio.base import AudioClip
from appliance.audio.playback import MemorySink
from appliance.events import TurnFinished
from appliance.turns import Utterance
from bench.common import Figure, median, percentile

REPO = Path(__file__).resolve().parent.parent
STT, LLM, TTS = 0.050, 0.120, 0.080  # seconds the fake cloud waits before answering each request
# A real model streams its reply token by token (50-100 tokens/s); a fake that sends the whole reply in one
# burst would put our parsing of every later token on the critical path, which a real cloud never does.
TOKEN = 0.020
TURNS = 60


class FirstBlockSink(MemorySink):
    """Records when the first block of each turn reached the speaker (monotonic clock, as the fake's log)."""

    def __init__(self) -> None:
        super().__init__(realtime=False)
        self.first: float | None = None

    async def _write_block(self, block: np.ndarray) -> None:
        if self.first is None:
            self.first = time.monotonic()
        await trio.lowlevel.checkpoint()  # no real-time pacing: we only need the moment the first block arrives


def start_fake_cloud(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.cloud", "--port", "0", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http"):
        process.kill()
        raise RuntimeError("fake cloud did not start")
    return process, url


def turn_overhead() -> list[Figure]:
    import httpx

    from tests.fakes.cloud import FakeCloud
    from tests.harness import cloud_config, running_appliance

    process, url = start_fake_cloud(
        "--stt-latency", str(STT), "--llm-latency", str(LLM), "--tts-latency", str(TTS), "--token-delay", str(TOKEN)
    )
    # The fake streams its reply a word per delta after a role-only one: the delta that completes the first
    # sentence is piece ``sentence_end`` of the stream, and until it has gone out the time is the cloud's.
    words = FakeCloud.reply.split(" ")
    sentence_end = 1 + next(i for i, w in enumerate(words) if w.endswith((".", "!", "?")))
    turns: list[tuple[float, float]] = []
    cpu: list[float] = []  # this process's CPU time per measured turn (the fake runs in its own process)

    async def run() -> None:
        sink = FirstBlockSink()
        speech = AudioClip.silence(1.5)
        async with running_appliance(cloud_config(url), sink=sink) as (app, _log):
            with app.bus.subscribe(TurnFinished, name="bench") as finished:
                for i in range(TURNS + 3):
                    sink.first = None
                    started, cpu_started = time.monotonic(), time.process_time()
                    await app.conversation.start_turn(Utterance(audio=speech))
                    await finished.receive.receive()
                    if i >= 3 and sink.first is not None:  # the first turns warm up connections and imports
                        turns.append((started, sink.first))
                        cpu.append(time.process_time() - cpu_started)

    try:
        trio.run(run)
        log = httpx.get(f"{url}/_fake/requests").json()
    finally:
        process.kill()
    beyond: list[float] = []
    ours: dict[str, list[float]] = {
        "utterance -> STT request arrived (WAV, upload)": [],
        "STT answer -> LLM request arrived": [],
        "first sentence sent -> TTS request arrived": [],
        "first TTS bytes sent -> first block at the sink": [],
    }
    theirs: list[float] = []
    for started, first in turns:
        inside = [r for r in log if started <= r["at"] <= first]
        stt = next(r for r in inside if r["path"].endswith("transcriptions"))
        llm = next(r for r in inside if r["path"].endswith("completions"))
        tts = min((r for r in inside if r["path"].endswith("speech")), key=lambda r: r["at"])
        # Only what the fake was told: a latency per request (from the request's arrival) and a token delay
        # before each LLM delta with content. Everything else counts against us, the fake's own Python too.
        told = STT + LLM + TTS + TOKEN * sentence_end
        beyond.append((first - started - told) * 1000)
        for name, value in zip(
            ours,
            (
                stt["at"] - started,
                llm["at"] - stt["first_byte_at"],
                tts["at"] - llm["sent_at"][sentence_end],
                first - tts["first_byte_at"],
            ),
            strict=True,
        ):
            ours[name].append(value * 1000)
        theirs.append(
            (
                (stt["first_byte_at"] - stt["at"] - STT)
                + (llm["sent_at"][sentence_end] - llm["at"] - LLM - TOKEN * sentence_end)
                + (tts["first_byte_at"] - tts["at"] - TTS)
            )
            * 1000
        )
    load = os.getloadavg()[0]
    figures = [
        Figure(
            "turn overhead: utterance handed over -> first audio at the sink, beyond the configured cloud "
            "waits, median",
            median(beyond),
            "ms",
            "<= 15",
            f"{len(beyond)} turns, {TOKEN * 1000:g} ms per token; clock starts before the first byte is sent; "
            f"machine shared (load {load:.1f})",
        ),
        Figure("turn overhead, p95", percentile(beyond, 95), "ms", "<= 30"),
        Figure(
            "  our process's CPU time per turn, median",
            median(cpu) * 1000,
            "ms",
            note="the whole turn (request building, parsing, sink, events, the idle parts too); less load-dependent "
            "than the wall-clock overhead above",
        ),
    ]
    figures += [Figure(f"  of which ours: {name}, median", median(v), "ms") for name, v in ours.items()]
    figures.append(
        Figure(
            "  of which the fake server's own work beyond its waits, median",
            median(theirs),
            "ms",
            note="counted against us above: a real cloud's would be in its latency",
        )
    )
    return figures


def _notify_socket(path: Path):  # type: ignore[no-untyped-def]
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    return sock


def _wait_message(sock, prefix: str) -> float:  # type: ignore[no-untyped-def]
    while True:
        data = sock.recv(4096).decode()
        if any(line.startswith(prefix) for line in data.splitlines()):
            return time.perf_counter()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def process_figures() -> list[Figure]:
    process_cloud, url = start_fake_cloud("--tts-latency", "0.05")
    ready_times, rss, stops = [], [], []
    try:
        for run in range(5):
            with tempfile.TemporaryDirectory() as tmp:
                sock_path = Path(tmp) / "notify.sock"
                sock = _notify_socket(sock_path)
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "NOTIFY_SOCKET": str(sock_path),
                    "OPENAI_API_KEY": "bench-key",
                    "APPLIANCE_STT__BASE_URL": f"{url}/v1",
                    "APPLIANCE_LLM__BASE_URL": f"{url}/v1",
                    "APPLIANCE_TTS__BASE_URL": f"{url}/v1",
                    "APPLIANCE_AUDIO__INPUT": "simulated",
                    "APPLIANCE_AUDIO__SIMULATED_SPEECH_AFTER": "0.5",
                    "APPLIANCE_AUDIO__OUTPUT": "simulated",
                    "APPLIANCE_GPIO__PIN_FACTORY": "mock",
                    "APPLIANCE_LOG__STATUS_LINE": "off",
                    "APPLIANCE_LOG__LEVEL": "WARNING",
                    "APPLIANCE_CONTROL__PORT": "0",
                }
                started = time.perf_counter()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "appliance", "run"],
                    env=env,
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    ready_times.append(_wait_message(sock, "READY=1") - started)
                    _wait_message(sock, "STATUS=speaking")
                    if run == 0:
                        _wait_message(sock, "STATUS=idle")
                        time.sleep(2)  # SDKs loaded, one turn done, idle again
                        rss.append(_rss_mb(proc.pid))
                    sent = time.perf_counter()
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=10)
                    if run:  # runs 1.. are stopped while the reply is being spoken
                        stops.append(time.perf_counter() - sent)
                finally:
                    proc.kill()
                    sock.close()
    finally:
        process_cloud.kill()
    return [
        Figure("start -> READY=1, median of 5", median(ready_times) * 1000, "ms", "<= 1500"),
        Figure("idle RSS after a cloud turn", rss[0] if rss else float("nan"), "MB", "<= 120"),
        Figure("SIGTERM mid-reply -> exit, worst of 4", max(stops) * 1000, "ms", "<= 2000"),
    ]


def main() -> list[Figure]:
    return turn_overhead() + process_figures()
