"""Hostile clients (issue 15): what they get out of the control API and ``appliance serve``.

1. Control API: schemathesis (every check, every phase, stateful included, token configured) plus the
   hand-made hostile requests; the figures are requests answered and 5xx among them, counted by the server
   itself (``appliance_control_responses_total``).
2. Control API: /v1/health and /v1/status latency while four sockets hold authenticated bodies that never
   come and two strangers try the same (more stalls than the two-slot turnstile).
3. ``appliance serve``: peak RSS of the server process (a child process, so only its memory is measured)
   under the worst load it accepts: 16 connections x 4 sessions, every session invoking just under a minute of
   audio at once (the in-flight budget refuses what does not fit), then the replies.

Run with ``python -m bench hostile``. Wall-clock figures on a shared machine are indicative only.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from bench.common import Figure, median, percentile

CONNECTIONS = 16
SESSIONS = 4
AUDIO_SECONDS = 59.0


def control_fuzz_figures() -> list[Figure]:
    from tests.fakes.control_robot import TOKEN
    from tests.test_control_fuzz import robot_in_thread
    from tests.test_hostile_fuzz import run_schemathesis

    with tempfile.TemporaryDirectory() as directory, robot_in_thread(Path(directory)) as url:
        result = run_schemathesis(url)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        text = httpx.get(f"{url}/v1/metrics", headers=headers).text
    counts: dict[int, int] = {}
    for line in text.splitlines():
        if line.startswith("appliance_control_responses_total{"):
            code = int(line.split('code="', 1)[1].split('"', 1)[0])
            counts[code] = int(float(line.rsplit(" ", 1)[1]))
    total = sum(counts.values())
    errors = sum(n for code, n in counts.items() if code >= 500)
    failures = 0 if result.returncode == 0 else 1
    return [
        Figure("control: requests answered under schemathesis", total, "req"),
        Figure("control: 5xx among them", errors, "req", "<= 0"),
        Figure("control: 4xx among them (refused)", sum(n for c, n in counts.items() if 400 <= c < 500), "req"),
        Figure("control: schemathesis run failed", failures, "", "<= 0"),
    ]


async def _stalled_health() -> list[Figure]:
    from tests.fakes.control_robot import TOKEN, running_robot

    with tempfile.TemporaryDirectory() as directory:
        async with running_robot(Path(directory)) as robot, robot.client() as api:
            port = int(robot.url.rsplit(":", 1)[1])
            streams = []
            for token in (TOKEN,) * 4 + (None,) * 2:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                auth = f"Authorization: Bearer {token}\r\n" if token else ""
                await stream.send_all(
                    f"POST /v1/say HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
                    "Content-Length: 1000\r\n\r\n".encode()
                )
                streams.append(stream)
            health: list[float] = []
            status: list[float] = []
            answered = 0
            for _ in range(20):
                for path, into in (("/v1/health", health), ("/v1/status", status)):
                    started = time.perf_counter()
                    response = await api.get(path)
                    into.append((time.perf_counter() - started) * 1000)
                    answered += response.status_code == 200
            for stream in streams:
                await stream.aclose()
    return [
        Figure("control: health latency p50 while 6 bodies stall", median(health), "ms"),
        Figure("control: health latency max while 6 bodies stall", max(health), "ms"),
        Figure("control: status latency p95 while 6 bodies stall", percentile(status, 95), "ms"),
        Figure("control: health+status answered (of 40)", answered, "req", ">= 40"),
    ]


CHILD = """
import sys, trio
sys.path.insert(0, {root!r})
from appliance.turns import ReplyChunk
from appliance.settings.brains import ServerConfig
from appliance.server.avatar import AvatarServer

class SlowBrain:
    name = "slow"
    async def reply(self, req, out):
        async with out:
            await trio.sleep(2.0)  # an STT upload's worth of holding the audio
            await out.send(ReplyChunk("Done.", "Done."))
    async def aclose(self):
        return None

async def main():
    server = AvatarServer(SlowBrain(), ServerConfig(host="127.0.0.1", port=0, api_key="bench-key"))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        print(port, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def _load_server(port: int) -> tuple[int, int]:
    from trio_websocket import open_websocket_url

    audio = base64.b64encode(b"\x10\x00" * int(AUDIO_SECONDS * 16_000)).decode("ascii")
    accepted = refused = 0

    async def robot(index: int) -> None:
        nonlocal accepted, refused
        url = f"ws://127.0.0.1:{port}/ws"
        async with open_websocket_url(
            url, extra_headers=[("Authorization", "Bearer bench-key")], max_message_size=1 << 20
        ) as ws:
            for s in range(SESSIONS):
                await ws.send_message(json.dumps({"type": "start", "session_id": f"{index}-{s}"}))
                await ws.get_message()
            for s in range(SESSIONS):
                await ws.send_message(json.dumps({"type": "invoke", "session_id": f"{index}-{s}", "audio_data": audio}))
            waiting = SESSIONS
            while waiting:
                frame = json.loads(await ws.get_message())
                if frame["type"] == "error":
                    refused += 1
                    waiting -= 1
                elif frame["type"] == "accepted":
                    accepted += 1
                elif frame["type"] == "final":
                    waiting -= 1

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for index in range(CONNECTIONS):
                nursery.start_soon(robot, index)
    return accepted, refused


def serve_figures() -> list[Figure]:
    root = str(Path(__file__).resolve().parent.parent)
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=root)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        idle = _rss_kb(child.pid, "VmRSS")
        accepted, refused = trio.run(_load_server, port)
        peak = _rss_kb(child.pid, "VmHWM")
    finally:
        child.terminate()
        child.wait(10)
    return [
        Figure("serve: RSS at rest", idle / 1024, "MB"),
        Figure(
            f"serve: peak RSS, {CONNECTIONS} conn x {SESSIONS} sessions x {AUDIO_SECONDS:g} s invokes",
            peak / 1024,
            "MB",
            "<= 300",
        ),
        Figure("serve: invokes accepted at once (32 MB budget)", accepted, ""),
        Figure("serve: invokes refused as over budget", refused, ""),
    ]


def main() -> list[Figure]:
    figures = control_fuzz_figures()
    figures += trio.run(_stalled_health)
    figures += serve_figures()
    return figures
