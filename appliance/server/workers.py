"""``[server] workers`` above 1: several serve processes on one port, sharing their conversations.

One Python process answers every robot's turn one piece of work after another; with ten robots talking at once
the tenth waits for the other nine on one core. Here the parent binds the WebSocket port once (every worker
accepts from that socket and the least busy takes each new robot: ``fair_accept.py``) and, for the HTTP API,
one socket per worker on its port (``SO_REUSEPORT``: the kernel spreads its short requests over them), forks the
workers before any of them starts Trio or opens a connection, and then only waits: a worker that ends is started
again on the same sockets (connections that arrived meanwhile wait in their queue), one that cannot stay up ends
the service, SIGTERM/SIGINT stop them all. Each worker builds its own brain and connection pools; conversations
live in a SQLite file they all open (``histories.SharedHistories``), so a robot that reconnects to another
worker continues where it was. A robot's connection stays with one worker, so its turns stay in order.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from appliance.server.fair_accept import Shares
from appliance.server.histories import SharedHistories

log = logging.getLogger(__name__)

# A worker that ends sooner than this after its start is not worth restarting (a bad key file, a broken
# install): the service ends instead, and systemd's restart policy takes over.
SHORTEST_LIFE = 5.0
EXIT_FAILED = 1

# serve_one(index, the shared websocket listener, its http listener or None, conversations file, every worker's
# robot count) -> exit code
Worker = Callable[[int, socket.socket, socket.socket | None, Path, Shares], int]


def shared_port_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port (port 0: the first one's), the kernel balancing between them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host.strip("[]"), port))
            sock.listen(128)
            port = sock.getsockname()[1]
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Workers:
    """The parent: starts ``count`` workers, restarts one that ends, stops them all on a signal."""

    def __init__(self, count: int, serve_one: Worker, ws: socket.socket, http: list[socket.socket] | None):
        self.count = count
        self.serve_one = serve_one
        self.ws = ws
        self.http = http
        self.shares = Shares(count)
        self.running: dict[int, tuple[int, float]] = {}  # pid → (worker index, started at)
        self.stopping = False

    def run(self, store: Path) -> int:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.count):
                self._start(index, store)
            return self._wait(store)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self, index: int, store: Path) -> None:
        parent = os.getpid()
        self.shares.set(index, 0)  # a worker started again holds none of the robots its predecessor held
        pid = os.fork()
        if pid == 0:  # the worker: nothing of the parent's loop runs here, it only serves and exits
            code = EXIT_FAILED
            try:
                _end_with(parent)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)  # Trio's own handlers take over in serve_one
                for other, sock in enumerate(self.http or []):
                    if other != index:
                        sock.close()
                code = self.serve_one(index, self.ws, self.http[index] if self.http else None, store, self.shares)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.running[pid] = (index, time.monotonic())

    def _wait(self, store: Path) -> int:
        code = 0
        while self.running:
            try:
                pid, status = os.wait()  # a signal runs _stop, then the wait goes on (PEP 475)
            except ChildProcessError:
                break
            index, started = self.running.pop(pid)
            if self.stopping:
                continue
            ended = os.waitstatus_to_exitcode(status)
            lived = time.monotonic() - started
            if lived < SHORTEST_LIFE:
                log.error("worker %d ended %.1f s after its start (exit %d): stopping", index, lived, ended)
                code = ended or EXIT_FAILED  # a worker's configuration error is the service's
                self._stop()
                continue
            log.warning("worker %d ended (exit %d); starting it again", index, ended)
            self._start(index, store)
        return code

    def _stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        if signum is not None:
            log.info("stopping (%s)", signal.Signals(signum).name)
        self.stopping = True
        for pid in self.running:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _end_with(parent: int) -> None:
    """A worker gets SIGTERM when the parent dies, however it dies (SIGKILL too): no worker outlives the service
    to keep serving robots with nobody to stop or restart it."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request was in place
        raise SystemExit(EXIT_FAILED)


def run_workers(count: int, host: str, port: int, http_port: int | None, serve_one: Worker) -> int:
    """Bind, fork ``count`` workers and wait for them; the conversations file lasts as long as the service."""
    ws = shared_port_sockets(host, port, 1)[0]
    http = shared_port_sockets(host, http_port, count) if http_port is not None else None
    try:
        runtime = os.environ.get("RUNTIME_DIRECTORY")  # systemd's RuntimeDirectory=, else the temp dir
        with tempfile.TemporaryDirectory(prefix="appliance-serve-", dir=runtime or None) as tmp:
            log.info("%d workers on port %d", count, ws.getsockname()[1])
            store = Path(tmp) / "conversations.sqlite"
            # Made (and switched to WAL) here, once: two workers switching a new file to WAL at the same moment,
            # one fails with "database is locked" and, dying at its start, ends the service (a clean-clone run).
            SharedHistories(store).close()
            return Workers(count, serve_one, ws, http).run(store)
    finally:
        for sock in [ws, *(http or [])]:
            sock.close()
