"""Soak: many turns through the control API of the real process against the fake cloud (small latencies).

Reports the robot's memory (RSS) and open files after a warm-up and at the end, and the turn time of the first
and the last hundred turns: a leak or a slowdown shows as growth. ``SOAK_TURNS`` sets the number of turns
(default 1000, about five minutes); the history journal is on, as on a robot.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import Figure, percentile

REPO = Path(__file__).resolve().parent.parent
TOKEN = "soak-bench-token-0123456789"
WARM_UP = 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _turn(api: httpx.Client, n: int) -> float:
    started = time.perf_counter()
    with api.stream("POST", "/v1/conversation", json={"text": f"Soak question {n}"}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("event: finished"):
                break
    return time.perf_counter() - started


def main() -> list[Figure]:
    turns = int(os.environ.get("SOAK_TURNS", "1000"))
    cloud_port, port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cloud = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fakes.cloud",
                "--port",
                str(cloud_port),
                "--llm-latency",
                "0.02",
                "--tts-latency",
                "0.02",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        url = (cloud.stdout.readline() if cloud.stdout else "").strip() or f"http://127.0.0.1:{cloud_port}"
        robot_env = {
            **env,
            "OPENAI_API_KEY": "soak-key",
            "APPLIANCE_CONVERSATION__BRAIN": "cloud",
            "APPLIANCE_STT__BASE_URL": f"{url}/v1",
            "APPLIANCE_LLM__BASE_URL": f"{url}/v1",
            "APPLIANCE_TTS__BASE_URL": f"{url}/v1",
            "APPLIANCE_AUDIO__INPUT": "simulated",
            "APPLIANCE_AUDIO__SIMULATED_SPEECH_AFTER": "never",
            "APPLIANCE_AUDIO__OUTPUT": "simulated",
            "APPLIANCE_GPIO__PIN_FACTORY": "mock",
            "APPLIANCE_LOG__STATUS_LINE": "off",
            "APPLIANCE_LOG__LEVEL": "WARNING",
            "APPLIANCE_CONTROL__PORT": str(port),
            "APPLIANCE_CONTROL__TOKEN": TOKEN,
            "APPLIANCE_CONTROL__STATE_DIR": str(Path(tmp) / "state"),
        }
        robot = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run"],
            env=robot_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as api:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        if api.get("/v1/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                times = []
                rss_warm = fds_warm = 0
                for n in range(turns):
                    times.append(_turn(api, n))
                    if n + 1 == min(WARM_UP, turns):
                        rss_warm, fds_warm = _rss_kib(robot.pid), _fds(robot.pid)
                rss_end, fds_end = _rss_kib(robot.pid), _fds(robot.pid)
        finally:
            robot.terminate()
            cloud.terminate()
            robot.wait(10)
            cloud.wait(10)
    first = times[:WARM_UP]
    last = times[-WARM_UP:]
    growth = 100.0 * (rss_end - rss_warm) / rss_warm if rss_warm else float("nan")
    p95_first, p95_last = percentile(first, 95) * 1000, percentile(last, 95) * 1000
    note = f"{turns} turns; shared 2-core machine"
    return [
        Figure("soak: RSS after warm-up", rss_warm / 1024, "MB", note=note),
        Figure("soak: RSS growth after warm-up", growth, "%", "<= 5"),
        Figure("soak: open files growth after warm-up", fds_end - fds_warm, "fds", "<= 0"),
        Figure("soak: turn time p95, first 100", p95_first, "ms"),
        Figure("soak: turn time p95, last 100", p95_last, "ms"),
        Figure("soak: turn time p95 last / first", p95_last / p95_first if p95_first else float("nan"), "x", "<= 1.2"),
    ]
