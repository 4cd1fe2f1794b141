"""Serve's workers take new robots in turn (``server/fair_accept.py``): one listening socket, the least busy worker
accepts. Two listeners on one socket in one process stand for two workers (each its own descriptor, as after a
fork), and one appliance serve with two workers is checked from outside, by the sockets each worker holds."""

from __future__ import annotations

import os
import signal
import socket
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from appliance.server.fair_accept import FairListener, Shares
from tests.fakes.cloud import fake_cloud
from tests.http_serve_helpers import serve_url, start_serve

KEY = "secret-key"


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


async def test_the_least_busy_worker_takes_each_new_connection() -> None:
    sock = listening()
    shares = Shares(2)
    workers = [FairListener(sock, shares, 0), FairListener(socket.socket(fileno=os.dup(sock.fileno())), shares, 1)]
    held: list[list[trio.SocketStream]] = [[], []]
    accepted = trio.Semaphore(0)

    async def serve(index: int) -> None:
        while True:
            held[index].append(await workers[index].accept())
            workers[index].held(len(held[index]))
            accepted.release()

    async with trio.open_nursery() as nursery:
        for index in range(2):
            nursery.start_soon(serve, index)
        clients = []
        for _ in range(10):  # robots connecting one after another, as a fleet comes up
            clients.append(await trio.open_tcp_stream("127.0.0.1", sock.getsockname()[1]))
            with trio.fail_after(5):
                await accepted.acquire()
        assert [len(h) for h in held] == [5, 5]
        await held[0].pop().aclose()  # a robot of worker 0 leaves: the next one goes to worker 0
        workers[0].held(len(held[0]))
        clients.append(await trio.open_tcp_stream("127.0.0.1", sock.getsockname()[1]))
        with trio.fail_after(5):
            await accepted.acquire()
        assert [len(h) for h in held] == [5, 5]
        nursery.cancel_scope.cancel()
    for stream in [*clients, *held[0], *held[1]]:
        await stream.aclose()
    for worker in workers:
        await worker.aclose()


async def test_a_busier_worker_still_takes_a_connection_nobody_else_takes() -> None:
    """Worker 1 is stuck (never accepts): worker 0, busier on paper, takes the robot after LEAVE_FOR."""
    sock = listening()
    shares = Shares(2)
    worker = FairListener(sock, shares, 0)
    worker.held(3)
    async with await trio.open_tcp_stream("127.0.0.1", sock.getsockname()[1]):
        with trio.fail_after(5):
            stream = await worker.accept()
    await stream.aclose()
    await worker.aclose()


def robots_per_worker(port: int, workers: list[int]) -> list[int]:
    """How many established connections on ``port`` each worker holds (its descriptors against /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # local port, ESTABLISHED
            inodes.add(fields[9])
    counts = []
    for pid in workers:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        counts.append(sum(link.startswith("socket:[") and link[8:-1] in inodes for link in links))
    return counts


@pytest.mark.slow
async def test_appliance_serve_spreads_robots_evenly_over_its_workers(tmp_path: Path) -> None:
    async with fake_cloud() as cloud:
        process = await start_serve(tmp_path, cloud.url, KEY, "workers = 2\n")
        try:
            url, seen = await serve_url(process)
            assert process.stdout is not None
            with trio.fail_after(30):  # both workers listening: else the first takes every robot, as it should
                while seen.count(b"serving the AIAvatarKit protocol") < 2:
                    seen += await process.stdout.receive_some(4096)
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            workers = [int(pid) for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
            async with AsyncExitStack() as stack:
                for _ in range(8):
                    ws = await stack.enter_async_context(
                        open_websocket_url(url, extra_headers=[("Authorization", f"Bearer {KEY}")])
                    )
                    await ws.send_message('{"type": "start", "session_id": "s", "user_id": "robot"}')
                    await ws.get_message()  # connected: the worker holds it
                assert robots_per_worker(port, workers) == [4, 4]
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                await process.wait()
