"""Home Assistant over the ESPHome API: how soon after the wake word decision the first microphone audio
reaches Home Assistant (goal <= 50 ms), and the extra CPU of an idle Home Assistant connection (goal
<= 0.005 core).

The appliance runs in this process with a real-time simulated microphone (20 ms blocks); Home Assistant is
aioesphomeapi, the library it uses. For the latency it runs in a thread (both ends stamp
``time.perf_counter``, one clock); the wake word decision is the ``WakeWordDetected`` event the listening
service publishes, here published at random moments between blocks. For the CPU it runs in a separate
process, so only the server's share lands on this process's CPU time, measured with and without it.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
import time

import trio

from bench.common import Figure, median, percentile

WAKES = 20
IDLE_SECONDS = 15.0

_CLIENT = """
import asyncio, sys
from aioesphomeapi import APIClient

async def main():
    client = APIClient("127.0.0.1", int(sys.argv[1]), None, client_info="bench")
    await client.connect(login=False)
    await client.device_info()
    await client.list_entities_services()
    client.subscribe_states(lambda state: None)
    async def start(*args): return 0
    async def stop(abort): return None
    async def audio(data, data2): return None
    client.subscribe_voice_assistant(handle_start=start, handle_stop=stop, handle_audio=audio)
    print("ready", flush=True)
    await asyncio.sleep(float(sys.argv[2]))
    await client.disconnect()

asyncio.run(main())
"""


def _config():  # type: ignore[no-untyped-def]
    from appliance.config import AppConfig

    return AppConfig.model_validate(
        {
            "home_assistant": {"esphome": True, "host": "127.0.0.1", "port": 0, "mdns": False, "name": "bench"},
            "conversation": {"brains": ["home_assistant", "offline"]},
            "audio": {"input": "simulated", "output": "simulated", "simulated_speech_after": None},
            "gpio": {"pin_factory": "mock"},
            "log": {"status_line": "off", "level": "WARNING"},
            "failover": {"health_interval": 0},
        }
    )


async def _run() -> list[Figure]:
    from appliance.app import build_appliance
    from appliance.audio.playback import MemorySink
    from appliance.audio.sources import SimulatedMicrophone
    from appliance.events import WakeWordDetected
    from appliance.systemd import Notifier

    app = build_appliance(
        _config(),
        source=SimulatedMicrophone(None, None),
        sink=MemorySink(realtime=False),
        notifier=Notifier({}),
        handle_signals=False,
    )
    figures: list[Figure] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(app.run)
        service = app.supervisor.records["esphome"].service
        server = getattr(service, "inner", service)
        port = server.port

        # --- idle CPU: the same 15 s with and without a connected Home Assistant (in another process) -------
        await trio.sleep(1.0)
        t0 = time.process_time()
        await trio.sleep(IDLE_SECONDS)
        alone = (time.process_time() - t0) / IDLE_SECONDS
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", _CLIENT, str(port), str(IDLE_SECONDS + 8)], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        with trio.fail_after(20):
            await proc.stdout.receive_some(100)
        await trio.sleep(2.0)
        t0 = time.process_time()
        await trio.sleep(IDLE_SECONDS)
        connected = (time.process_time() - t0) / IDLE_SECONDS
        proc.kill()
        await proc.wait()
        figures.append(Figure("idle CPU of the appliance, no Home Assistant", alone, "core"))
        figures.append(Figure("idle CPU of the appliance, Home Assistant connected", connected, "core"))
        figures.append(
            Figure(
                "extra CPU while idle-connected",
                max(0.0, connected - alone),
                "core",
                "<= 0.005",
                "process CPU time, 2 x 15 s; machine shared",
            )
        )

        # --- wake word decision -> first audio byte at Home Assistant ------------------------------------
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        first_audio: list[float] = []
        arrived = threading.Event()

        async def connect():  # type: ignore[no-untyped-def]
            from aioesphomeapi import APIClient

            client = APIClient("127.0.0.1", port, None, client_info="bench")
            await client.connect(login=False)

            async def start(*args):  # type: ignore[no-untyped-def]
                return 0

            async def stop(abort: bool) -> None:
                return None

            async def audio(data: bytes, data2: bytes | None) -> None:
                if not arrived.is_set():
                    first_audio.append(time.perf_counter())
                    arrived.set()

            client.subscribe_voice_assistant(handle_start=start, handle_stop=stop, handle_audio=audio)
            return client

        client = await trio.to_thread.run_sync(asyncio.run_coroutine_threadsafe(connect(), loop).result, 15)
        with trio.fail_after(10):
            while not server.satellite.available:
                await trio.sleep(0.01)
        delays = []
        for _ in range(WAKES):
            await trio.sleep(0.2 + random.random() * 0.1)
            arrived.clear()
            decided = time.perf_counter()
            app.bus.publish(WakeWordDetected("okay nabu", 0.97))
            await trio.to_thread.run_sync(arrived.wait, 5)
            delays.append((first_audio[-1] - decided) * 1000)
            pipeline = server.satellite.pipeline
            if pipeline is not None:
                pipeline.abort("bench")
        await trio.to_thread.run_sync(asyncio.run_coroutine_threadsafe(client.disconnect(), loop).result, 5)
        loop.call_soon_threadsafe(loop.stop)
        figures.append(
            Figure(
                "wake word decision -> first audio at Home Assistant, median",
                median(delays),
                "ms",
                "<= 50",
                f"{WAKES} wakes, 20 ms blocks",
            )
        )
        figures.append(
            Figure(
                "wake word decision -> first audio at Home Assistant, max",
                max(delays),
                "ms",
                "<= 50",
                f"p90 {percentile(delays, 90):.1f} ms",
            )
        )
        app.supervisor.stop("bench done")
        nursery.cancel_scope.cancel()
    return figures


def main() -> list[Figure]:
    return trio.run(_run)


if __name__ == "__main__":
    from bench.common import print_figures

    print_figures(main())
