"""A whole appliance with its control API on an ephemeral 127.0.0.1 port, for tests and benchmarks.

Simulated microphone (silent unless asked), a memory speaker, mock GPIO pins, the offline brain (or one
given), histories in a temporary directory, and a config file that PATCH /config may rewrite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from appliance.app import build_appliance
from appliance.assembly.parts import Appliance
from appliance.audio.playback import MemorySink
from appliance.config import load_config
from appliance.systemd import Notifier

TOKEN = "test-token-0123456789abcdef"


def write_config(directory: Path, *, token: str | None = TOKEN, extra: str = "") -> Path:
    path = directory / "appliance.toml"
    token_line = f'token = "{token}"\n' if token else ""
    path.write_text(
        "# written by the test; comments must survive PATCH /config\n"
        "[control]\n"
        "port = 0\n"
        f'state_dir = "{directory / "state"}"\n'
        f"{token_line}"
        "max_sse_clients = 4\n"
        "max_say_chars = 200\n"
        "[audio]\n"
        'input = "simulated"\n'
        'output = "simulated"\n'
        "simulated_speech_after = 1000.0\n"
        "[gpio]\n"
        'pin_factory = "mock"\n'
        "[conversation]\n"
        'brain = "offline"\n' + extra
    )
    return path


@dataclass
class Robot:
    appliance: Appliance
    url: str
    config_path: Path
    sink: MemorySink
    stopped: trio.Event

    def client(self, token: str | None = TOKEN, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10, **kwargs)


@asynccontextmanager
async def running_robot(
    directory: Path, *, token: str | None = TOKEN, extra: str = "", brain: Any = None, realtime: bool = False
) -> AsyncIterator[Robot]:
    path = write_config(directory, token=token, extra=extra)
    config = load_config(path, environ={})
    sink = MemorySink(realtime=realtime)
    appliance = build_appliance(
        config, sink=sink, brain=brain, notifier=Notifier({}), handle_signals=False, control=True, config_path=path
    )
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await appliance.run(task_status=task_status)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        with trio.fail_after(15):  # a hang guard, not a timing check
            await appliance.control.bound.wait()
        yield Robot(appliance, f"http://127.0.0.1:{appliance.control.port}", path, sink, stopped)
        nursery.cancel_scope.cancel()
