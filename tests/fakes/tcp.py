"""Network faults on 127.0.0.1: a TCP proxy that can freeze (sockets open, no bytes move), and a free port that
refuses connections, and a hostname resolver that fails like DNS does (no query ever leaves the machine)."""

from __future__ import annotations

import socket

import trio


async def read_until(stream: trio.abc.ReceiveStream, pending: bytes, separator: bytes) -> tuple[bytes, bytes] | None:
    """(what came before ``separator``, what came after it) reading ``stream`` on from ``pending``; None when the
    stream ends first."""
    while separator not in pending:
        data = await stream.receive_some(65536)
        if not data:
            return None
        pending += data
    before, after = pending.split(separator, 1)
    return before, after


def refused_port() -> int:
    """A loopback port nobody listens on: connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FailingResolver(trio.abc.HostnameResolver):
    """Every lookup fails with 'Name or service not known' (EAI_NONAME), as for a name DNS does not know."""

    def __init__(self) -> None:
        self.lookups: list[str] = []

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # type: ignore[no-untyped-def]
        name = host.decode() if isinstance(host, bytes) else str(host)
        self.lookups.append(name)
        if name in ("127.0.0.1", "::1"):
            return socket.getaddrinfo(name, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def getnameinfo(self, sockaddr, flags):  # type: ignore[no-untyped-def]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


class FreezableProxy:
    """Forwards 127.0.0.1:<port> to a target port; ``freeze()`` stops all traffic but keeps TCP open.

    This is what a hung server looks like from the outside (SIGSTOPped process, dead Wi-Fi bridge): connects
    and writes succeed, nothing ever comes back, not even a pong.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._frozen = False
        self._thawed = trio.Event()
        self._thawed.set()

    def freeze(self) -> None:
        self._frozen = True
        self._thawed = trio.Event()

    def thaw(self) -> None:
        self._frozen = False
        self._thawed.set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=_Started(task_status, self.port))

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        async with client:
            await self._gate()
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)

    async def _gate(self) -> None:
        while self._frozen:
            await self._thawed.wait()

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            while True:
                data = await src.receive_some(65536)
                if not data:
                    break
                await self._gate()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


class _Started:
    """Hands the bound port to ``nursery.start`` instead of the listener list."""

    def __init__(self, task_status: trio.TaskStatus[int], port: int) -> None:
        self._task_status = task_status
        self._port = port

    def started(self, value: object = None) -> None:
        self._task_status.started(self._port)
