"""Run the real AIAvatarKit (its own venv, ``make interop-venv``) from a Trio test: server and client drivers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEER_PYTHON = Path(os.environ.get("AIAVATAR_PYTHON", REPO / ".cache" / "aiavatar-venv" / "bin" / "python"))
API_KEY = "secret-key"


@dataclass
class PeerServer:
    """The real ``AIAvatarWebSocketServer`` in a subprocess; ``kill``/``start`` to take it down and up again."""

    cloud_url: str
    pcm: int = 0
    port: int = 0
    process: trio.Process | None = None
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self, nursery: trio.Nursery) -> None:
        args = [
            str(PEER_PYTHON),
            str(HERE / "peer_server.py"),
            "--cloud",
            self.cloud_url,
            "--api-key",
            API_KEY,
            "--pcm",
            str(self.pcm),
            "--port",
            str(self.port),
        ]
        ready = trio.Event()

        async def run() -> None:
            async with trio.open_nursery() as inner:
                self.process = await inner.start(partial_run, args)
                assert self.process.stdout is not None and self.process.stderr is not None
                inner.start_soon(self._drain, self.process.stderr, None)
                await self._drain(self.process.stdout, ready)

        nursery.start_soon(run)
        with trio.fail_after(60):  # importing torch on a shared 2-core machine
            await ready.wait()

    async def _drain(self, stream: trio.abc.ReceiveStream, ready: trio.Event | None) -> None:
        buffer = b""
        async for data in stream:
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode(errors="replace")
                self.log.append(text)
                if ready is not None and text.startswith("PORT "):
                    self.port = int(text.split()[1])
                    ready.set()

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a close handshake, as a crashed or powered-off PC does."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def wait_dead(self) -> None:
        if self.process is not None:
            await self.process.wait()


async def partial_run(args: list[str], *, task_status: trio.TaskStatus[trio.Process]) -> None:
    await trio.run_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, task_status=task_status)


@asynccontextmanager
async def peer_server(cloud_url: str, *, pcm: int = 0) -> AsyncIterator[PeerServer]:
    peer = PeerServer(cloud_url, pcm)
    async with trio.open_nursery() as nursery:
        await peer.start(nursery)
        try:
            yield peer
        finally:
            peer.kill()
            nursery.cancel_scope.cancel()


async def run_peer_client(
    url: str, script: list[dict[str, Any]], *, timeout: float = 60, context: str | None = None
) -> dict[str, Any]:
    """AIAvatarKit's own client (peer_client.py) against ``url``; returns what it saw, as JSON. ``context``:
    the context_id its session starts with (a robot that continues its conversation on a new connection)."""
    args = [
        str(PEER_PYTHON),
        str(HERE / "peer_client.py"),
        "--url",
        url,
        "--api-key",
        API_KEY,
        "--script",
        json.dumps(script),
        *(["--context", context] if context else []),
    ]
    with trio.fail_after(timeout):
        done = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"peer client exited {done.returncode}: {done.stderr.decode(errors='replace')[-3000:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])
