"""Control API under load: GET /status latency with 50 concurrent clients while a turn is playing, and how
late the audio loop runs meanwhile (goal: lag p99 <= 5 ms; the API must never starve audio).

The appliance (real server, real-time speaker, a brain that keeps talking) runs in this process; the 50
clients run in a separate process, as they would on a laptop, so only the server's work lands on the
appliance's event loop. Audio loop lag = how late a task that wakes every audio block (20 ms) actually
wakes, which is what a capture or playback loop would suffer.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

from bench.common import Figure, percentile

CLIENTS = 50
LOAD_SECONDS = 8.0
BLOCK = 0.020


class ChattyBrain:
    """Talks for a long time: many half-second tone sentences, so a turn is running during the whole load."""

    name = "chatty"

    async def reply(self, request, out) -> None:  # type: ignore[no-untyped-def]
        from appliance.audio.base import AudioClip
        from appliance.turns import ReplyChunk, Transcript

        t = np.arange(12_000) / 24_000
        tone = AudioClip((np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16), 24_000)
        async with out:
            await out.send(Transcript(request.utterance.text or ""))
            for i in range(200):
                await out.send(ReplyChunk(f"Sentence {i}.", f"Sentence {i}.", (), tone))

    async def aclose(self) -> None:
        return None


class LoopWork(trio.abc.Instrument):
    """How long the event loop works without looking at timers or I/O (between two I/O waits): the part of
    audio lag this process causes itself, apart from the OS giving the CPU to someone else."""

    def __init__(self) -> None:
        self.stretches: list[float] = []
        self.cpu: list[float] = []
        self._since: float | None = None
        self._cpu_since = 0.0
        self.recording = False

    def after_io_wait(self, timeout: float) -> None:
        self._since = time.perf_counter()
        self._cpu_since = time.thread_time()

    def before_io_wait(self, timeout: float) -> None:
        if self.recording and self._since is not None:
            self.stretches.append(time.perf_counter() - self._since)
            self.cpu.append(time.thread_time() - self._cpu_since)


async def _lag_probe(samples: list[float], stop: trio.Event) -> None:
    deadline = trio.current_time()
    while not stop.is_set():
        deadline += BLOCK
        await trio.sleep_until(deadline)
        samples.append(max(0.0, trio.current_time() - deadline))


async def _measure() -> dict[str, list[float]]:
    from tests.fakes.control_robot import TOKEN, running_robot

    with tempfile.TemporaryDirectory() as folder:
        async with running_robot(Path(folder), brain=ChattyBrain(), realtime=True) as robot:
            # Right after READY the API's framework is still being imported in a worker thread (it holds the
            # GIL in stretches); measure that apart from the idle loop.
            start_lag: list[float] = []
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_lag_probe, start_lag, stop)
                async with robot.client() as api:
                    assert (await api.get("/v1/status")).status_code == 200
                stop.set()
            idle_lag: list[float] = []
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_lag_probe, idle_lag, stop)
                await trio.sleep(2.0)
                stop.set()
            async with robot.client() as api:
                async with api.stream("POST", "/v1/conversation", json={"text": "talk for a while"}) as stream:
                    assert stream.status_code == 200
                    await trio.sleep(0.3)
                    assert robot.appliance.state.state.value in ("thinking", "speaking")
                    load_lag: list[float] = []
                    stop = trio.Event()
                    work = LoopWork()
                    trio.lowlevel.add_instrument(work)
                    work.recording = True
                    cpu_started, wall_started = time.process_time(), time.perf_counter()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_lag_probe, load_lag, stop)
                        result = await trio.run_process(
                            [
                                sys.executable,
                                "-m",
                                "bench.bench_control",
                                "--load",
                                robot.url,
                                TOKEN,
                                str(CLIENTS),
                                str(LOAD_SECONDS),
                            ],
                            capture_stdout=True,
                        )
                        stop.set()
                    work.recording = False
                    trio.lowlevel.remove_instrument(work)
                    cpu_share = (time.process_time() - cpu_started) / (time.perf_counter() - wall_started)
                    still_talking = robot.appliance.state.state.value == "speaking"
                    await api.post("/v1/turn/cancel", json={})
            load = json.loads(result.stdout)
            return {
                "start_lag": start_lag,
                "idle_lag": idle_lag,
                "load_lag": load_lag,
                "latency": load["latency"],
                "errors": [load["errors"]],
                "talking": [float(still_talking)],
                "elapsed": [load["elapsed"]],
                "stretches": work.stretches,
                "stretch_cpu": work.cpu,
                "cpu_share": [cpu_share],
            }


def _load(url: str, token: str, clients: int, seconds: float) -> None:
    """The client side, in its own process: ``clients`` loops of GET /status for ``seconds``.

    Niced: on the robot the clients are other machines; here they must not take the CPU the appliance
    would have (what is measured is the server's effect on the audio loop, not a CPU fight).
    """
    import os

    import httpx

    os.nice(19)

    latencies: list[float] = []
    errors = 0

    async def client(http: httpx.AsyncClient, until: float) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            started = time.perf_counter()
            response = await http.get("/v1/status")
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    async def run() -> float:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30
        ) as http:
            await http.get("/v1/status")  # warm up one connection
            started = time.perf_counter()
            until = started + seconds
            async with trio.open_nursery() as nursery:
                for _ in range(clients):
                    nursery.start_soon(client, http, until)
            return time.perf_counter() - started

    elapsed = trio.run(run)
    json.dump({"latency": latencies, "errors": errors, "elapsed": elapsed}, sys.stdout)


def main() -> list[Figure]:
    data = trio.run(_measure)
    ms = lambda values, pct: 1000 * percentile(values, pct)  # noqa: E731
    latency, lag, idle = data["latency"], data["load_lag"], data["idle_lag"]
    rate = len(latency) / data["elapsed"][0]
    note = f"{CLIENTS} clients, {LOAD_SECONDS:.0f} s, turn playing"
    return [
        Figure("control: GET /status latency p50", ms(latency, 50), "ms", note=note),
        Figure("control: GET /status latency p99", ms(latency, 99), "ms", note=note),
        Figure("control: GET /status throughput", rate, "req/s", note=f"{int(data['errors'][0])} errors"),
        Figure("control: audio loop lag p50 under API load", ms(lag, 50), "ms", note="20 ms block timer"),
        Figure("control: audio loop lag p99 under API load", ms(lag, 99), "ms", "<= 5"),
        Figure("control: audio loop lag max under API load", 1000 * max(lag), "ms"),
        Figure("control: audio loop lag p99 idle (baseline)", ms(idle, 99), "ms"),
        Figure(
            "control: audio loop lag max from READY to the API answering",
            1000 * max(data["start_lag"], default=0),
            "ms",
            note="the web framework loading in a thread",
        ),
        Figure(
            "control: loop busy stretch p99 under API load",
            ms(data["stretches"], 99),
            "ms",
            "<= 5",
            note="work between two I/O polls, wall time",
        ),
        Figure(
            "control: loop busy stretch p99, CPU time",
            ms(data["stretch_cpu"], 99),
            "ms",
            "<= 5",
            note="the same, CPU time of the loop thread",
        ),
        Figure(
            "control: appliance CPU share under load",
            100 * data["cpu_share"][0],
            "%",
            note="of one core; the clients run in another process",
        ),
        Figure("control: turn still speaking after the load", data["talking"][0], "bool", ">= 1"),
    ]


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--load":
        _load(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        from bench.common import print_figures

        print_figures(main())
