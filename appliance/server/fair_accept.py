"""Serve's workers take new robots in turn: one listening socket for all of them, and a worker holding more
robots than another lets that one take the next.

With a socket per worker (``SO_REUSEPORT``) the kernel picks the worker by a hash of the addresses: ten robots
went 3/7 or 4/6 over two workers in each of five tries. A robot's WebSocket stays open for hours, so the
busier worker stays busier, and when the ten talk at once the last of them waits for six others on one core
instead of four. Here every worker waits on the same socket (forked from the parent, so one queue); each
keeps its number of open robot connections in memory the workers share (``Shares``), and one that holds
more than the fewest waits ``LEAVE_FOR`` before taking a waiting connection, so a less busy worker takes it;
it still takes it then, so a stuck worker only slows new connections down.
"""

from __future__ import annotations

import errno
import mmap
import socket

import trio

# How long a busier worker leaves a new connection to a less busy one: a worker in the middle of ten turns
# reaches its accept loop within a few milliseconds.
LEAVE_FOR = 0.05
_LOOK_EVERY = 0.001  # meanwhile it looks whether the counts changed this often

# What a connection that ended before it was accepted looks like: another try, as trio's own listener does.
_GONE_NAMES = "ECONNABORTED EPROTO EPERM ENETDOWN ENOPROTOOPT EHOSTDOWN ENONET EHOSTUNREACH EOPNOTSUPP ENETUNREACH"
_GONE = {code for name in [*_GONE_NAMES.split(), "ETIMEDOUT", "ECONNRESET"] if (code := getattr(errno, name, None))}


class Shares:
    """Each worker's number of open robot connections, in anonymous shared memory made before the fork: every
    worker writes its own slot and reads the others'. A slot is a machine word, written whole."""

    def __init__(self, workers: int) -> None:
        self._memory = mmap.mmap(-1, 8 * workers)  # MAP_SHARED: the forked workers see one memory
        self.counts = memoryview(self._memory).cast("q")

    def set(self, worker: int, count: int) -> None:
        self.counts[worker] = count

    def busier(self, worker: int) -> bool:
        """This worker holds more connections than the least busy one."""
        return self.counts[worker] > min(self.counts)


class FairListener(trio.abc.Listener[trio.SocketStream]):
    """Worker ``worker``'s side of the shared listening socket ``sock``: ``held`` tells how many robots it holds
    (the server calls it as connections open and close), ``accept`` lets a less busy worker go first."""

    def __init__(self, sock: socket.socket, shares: Shares, worker: int) -> None:
        sock.setblocking(False)
        self.socket = sock
        self.shares = shares
        self.worker = worker
        shares.set(worker, 0)

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    def held(self, connections: int) -> None:
        self.shares.set(self.worker, connections)

    async def accept(self) -> trio.SocketStream:
        while True:
            await trio.lowlevel.wait_readable(self.socket)
            if await self._left_to_others():
                continue  # look again, with the counts as they are now
            try:
                conn, _ = self.socket.accept()
            except BlockingIOError:
                continue  # another worker took it
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise
                continue
            conn.setblocking(False)
            return trio.SocketStream(trio.socket.from_stdlib_socket(conn))

    async def _left_to_others(self) -> bool:
        """While this worker holds more robots than another, that one has up to ``LEAVE_FOR`` to take what waits:
        True once this one no longer holds more, False (take it) when nobody did in time."""
        if not self.shares.busier(self.worker):
            return False
        for _ in range(round(LEAVE_FOR / _LOOK_EVERY)):  # (the counts are the other processes': no event to await)
            await trio.sleep(_LOOK_EVERY)
            if not self.shares.busier(self.worker):
                return True
        return False

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self.socket)
        self.socket.close()
        await trio.lowlevel.checkpoint()
