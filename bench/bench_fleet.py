"""``python -m bench fleet``: one Mosquitto and N simulated robots (the real MQTT link, the rest stubbed).

For each N (``BENCH_FLEET_N``, default ``10,100``; the issue's full run is ``10,100,500``) the robots run in
worker processes of at most ``BENCH_FLEET_PER_PROCESS`` (125) robots, each one ``trio.run`` with one
:class:`~appliance.integrations.mqtt.service.MqttService` per robot. Measured:

- a fleet-wide say (``appliance/all/say``, QoS 1) from publish to each robot's command layer: p50 / p99;
- broker traffic at rest (``BENCH_FLEET_IDLE`` seconds, default 20): PUBLISH messages per second seen by a
  subscriber to ``appliance/#``, and every packet the broker received per second ($SYS, includes keep-alives);
- a robot's idle CPU for MQTT: the workers' process CPU time over the idle window, per robot;
- broker memory per robot: Mosquitto's RSS growth from no robots to all connected and announced, per robot.

Wall-clock times cross processes on one machine (the same clock). CPU figures are process CPU time, on a
machine shared with other work.
"""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import Figure, percentile

ROUNDS = 5


def _sizes() -> list[int]:
    raw = os.environ.get("BENCH_FLEET_N", "10,100")
    return [int(n) for n in raw.split(",") if n.strip()]


# --- a worker process: K robots --------------------------------------------------------------------------------


def _stub_appliance(config: Any) -> Any:
    from types import SimpleNamespace

    from appliance.bus import EventBus
    from appliance.events import State
    from appliance.settings.hardware import FACES

    async def cancel_turn(reason: str) -> bool:
        return False

    record = SimpleNamespace(status="running")
    return SimpleNamespace(
        config=config,
        bus=EventBus(),
        state=SimpleNamespace(state=State.IDLE),
        faces=SimpleNamespace(known=set(FACES), current="neutral", resolve=lambda n: n if n in FACES else None),
        sink=SimpleNamespace(volume=1.0, name="stub"),
        supervisor=SimpleNamespace(started_at=None, records={"conversation": record}),
        conversation=SimpleNamespace(cancel_turn=cancel_turn),
        brain=SimpleNamespace(name="stub"),
    )


def worker(url: str, first: int, count: int) -> None:
    import trio

    from appliance.commands import Commands
    from appliance.config import AppConfig
    from appliance.integrations.mqtt.service import MqttService

    base = AppConfig.model_validate({"mqtt": {"enabled": True, "url": url, "node_id": "bench0"}})

    class RecordingCommands(Commands):
        def say(self, text: Any, *, interrupt: bool = False, source: str) -> str:
            at = time.time()
            node = self.app.config.mqtt.node_id
            print(f"said {node} {text} {at:.6f}", flush=True)
            return "x"

    async def main() -> None:
        services = []
        for i in range(first, first + count):
            config = base.model_copy(update={"mqtt": base.mqtt.model_copy(update={"node_id": f"bench{i}"})})
            app = _stub_appliance(config)
            app.supervisor.started_at = trio.current_time()
            commands = RecordingCommands(app)
            commands.speaker = object()  # type: ignore[assignment]  # stubbed: say is recorded, not spoken
            services.append(MqttService(app, commands))
        async with trio.open_nursery() as nursery:
            for service in services:
                await nursery.start(service.run)
            while not all(s.link is not None and s.link.connected for s in services):
                await trio.sleep(0.05)
            print(f"ready {count}", flush=True)
            stdin = trio.lowlevel.FdStream(os.dup(0))
            buffer = b""
            while True:
                data = await stdin.receive_some()
                if not data:
                    nursery.cancel_scope.cancel()
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip() == b"cpu":
                        print(f"cpu {time.process_time():.6f}", flush=True)

    trio.run(main)


# --- the orchestrator ----------------------------------------------------------------------------------------


class Worker:
    def __init__(self, url: str, first: int, count: int) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_fleet", "worker", url, str(first), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _expect(workers: list[Worker], prefix: str, total: int, timeout: float) -> list[str]:
    found: list[str] = []
    deadline = time.monotonic() + timeout
    while len(found) < total:
        progressed = False
        for w in workers:
            try:
                line = w.lines.get_nowait()
            except queue.Empty:
                continue
            progressed = True
            if line.startswith(prefix):
                found.append(line)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(found)}/{total} '{prefix}' lines")
        if not progressed:
            time.sleep(0.005)
    return found


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_fleet(n: int, idle: float, per_process: int) -> list[Figure]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from tests.mqtt_broker import Mosquitto

    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp), sys_interval=1) as broker:
        assert broker.proc is not None
        time.sleep(0.5)
        rss_before = _rss_kib(broker.proc.pid)
        counted = {"publish": 0}
        sys_values: list[tuple[float, int]] = []
        lock = threading.Lock()

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            with lock:
                if message.topic == "$SYS/broker/messages/received":
                    # Every packet the broker has received, published each second when it changed.
                    sys_values.append((time.monotonic(), int(message.payload)))
                else:
                    counted["publish"] += 1

        observer = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-observer")
        observer.on_message = on_message
        observer.connect("127.0.0.1", broker.port)
        observer.loop_start()

        workers = [Worker(broker.url, first, min(per_process, n - first)) for first in range(0, n, per_process)]
        try:
            started = time.monotonic()
            _expect(workers, "ready", len(workers), timeout=60 + n * 0.2)
            connect_s = time.monotonic() - started
            time.sleep(2.0)  # discovery and first state have gone out
            rss_after = _rss_kib(broker.proc.pid)

            # At rest.
            observer.subscribe([("appliance/#", 0), ("$SYS/broker/messages/received", 0)])
            time.sleep(1.0)
            with lock:
                counted["publish"] = 0
            for w in workers:
                w.send("cpu")
            cpu_start = sum(float(line.split()[1]) for line in _expect(workers, "cpu", len(workers), 30))
            idle_start = time.monotonic()
            time.sleep(idle)
            for w in workers:
                w.send("cpu")
            cpu_end = sum(float(line.split()[1]) for line in _expect(workers, "cpu", len(workers), 30))
            idle_s = time.monotonic() - idle_start
            idle_end = time.monotonic()
            with lock:
                publishes = counted["publish"]
                # The first value the broker published a while into the window is the baseline: an earlier one
                # may still count the tail of the connect-time announcements.
                window = [(t, v) for t, v in sys_values if t >= idle_start + 1.5]
            observer.unsubscribe("appliance/#")
            packets_per_s = math.nan
            if window:
                (t0, v0), v1 = window[0], window[-1][1]
                packets_per_s = (v1 - v0) / max(idle_end - t0, 1e-9)

            # Fleet-wide say.
            latencies: list[float] = []
            for round_ in range(ROUNDS):
                text = f"round{round_}"
                sent = time.time()
                payload = json.dumps({"id": f"bench-{n}-{round_}", "text": text, "at": sent})
                observer.publish("appliance/all/say", payload, qos=1).wait_for_publish(10)
                said = _expect(workers, "said", n, timeout=30 + n * 0.05)
                latencies += [float(line.split()[3]) - sent for line in said]
                time.sleep(0.3)
        finally:
            for w in workers:
                w.stop()
            observer.loop_stop()
            observer.disconnect()

    per_robot_mcore = (cpu_end - cpu_start) / idle_s / n * 1000
    return [
        Figure(f"fleet N={n}: all robots connected and announced", connect_s, "s"),
        Figure(f"fleet N={n}: fleet say to each robot p50", percentile(latencies, 50) * 1000, "ms"),
        Figure(f"fleet N={n}: fleet say to each robot p99", percentile(latencies, 99) * 1000, "ms"),
        Figure(
            f"fleet N={n}: broker PUBLISH messages/s at rest",
            publishes / idle_s,
            "msg/s",
            note=f"{publishes} in {idle_s:.0f} s; uptime every 60 s per robot",
        ),
        Figure(
            f"fleet N={n}: broker packets received/s at rest ($SYS)",
            packets_per_s,
            "pkt/s",
            note="includes keep-alive PINGREQs",
        ),
        Figure(
            f"fleet N={n}: idle CPU per robot for MQTT",
            per_robot_mcore,
            "mcore",
            target="<= 2",
            note="process CPU time / wall time / robots; 2 mcore = 0.002 core",
        ),
        Figure(
            f"fleet N={n}: broker memory per robot",
            (rss_after - rss_before) / n,
            "KiB",
            note="connection + 18 retained messages (14 discovery, state, info, update, availability)",
        ),
    ]


def main() -> list[Figure]:
    idle = float(os.environ.get("BENCH_FLEET_IDLE", "20"))
    per_process = int(os.environ.get("BENCH_FLEET_PER_PROCESS", "125"))
    figures: list[Figure] = []
    for n in _sizes():
        figures += run_fleet(n, idle, per_process)
    return figures


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        from bench.common import print_figures

        print_figures(main())
