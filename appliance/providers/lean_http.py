"""A lean HTTP/1.1 client for one origin (the OpenAI-compatible endpoints): kept-alive connections, each request
written in one send, answers parsed by llhttp (``httptools``, Node's C parser, the one uvicorn uses).

``appliance serve`` makes five requests a turn for each robot. Through httpx2 (client, httpcore2's pool, h11's
pure-Python parser, headers and body in two sends) one warm request cost 0.7-0.9 ms of CPU here, half a turn's
CPU in all; ten robots' requests at once queue behind each other on one core, and that queue is the first
audio's delay. This client does what those endpoints need and no more: POST or GET with a body already in
bytes, the answer's head read, its body streamed as it arrives (chunked, sized, or to the close).

It raises httpx2's own exceptions (connect, read, write errors and timeouts; ``RemoteProtocolError`` for a
malformed or cut answer), so ``http_errors`` maps its failures exactly as it maps httpx2's. Timeouts are
httpx2's: ``connect`` for the TCP and TLS handshake, ``timeout`` for each send and each read.
"""

from __future__ import annotations

import ssl
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx2
import trio

MAX_HEAD = 64 * 1024  # an answer's status line and headers beyond this are not an API's
READ_BYTES = 65536


class Response:
    """The parts of ``httpx2.Response`` the providers read: status, headers, the body whole or as it comes."""

    def __init__(self) -> None:
        self._connection: _Connection | None = None
        self.status_code = 0
        self.headers: dict[str, str] = {}  # names in lower case
        self.content = b""

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives: what one read brought, in one piece (never an empty one)."""
        assert self._connection is not None
        async for data in self._connection.body():
            yield data

    async def aread(self) -> bytes:
        self.content = b"".join([data async for data in self.aiter_bytes()])
        return self.content


class _Connection:
    """One kept-alive connection and its parser; serves one request at a time."""

    def __init__(self, stream: trio.abc.Stream, socket: Any, timeout: float) -> None:
        self.stream = stream
        self.socket = socket  # the TCP socket under TLS too: an idle one that became readable was closed
        self.timeout = timeout
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._pieces: list[bytes] = []
        self._head: dict[str, str] = {}
        self._head_done = False
        self._keep_alive = False
        self._interim = False
        self._status = 0
        self._complete = False
        self._sized = False
        self._decoder: Any = None

    # --- llhttp's callbacks -------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._head = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._head[key] = f"{self._head[key]}, {text}" if key in self._head else text

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim answer (100 Continue...): the real one follows
            self._interim = True
            return
        self._status, self._head_done = status, True
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the message is complete

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True

    # --- one exchange --------------------------------------------------------------------------------------
    async def exchange(self, request: bytes, response: Response, *, head_only: bool = False) -> None:
        """Send the request in one write; return once the answer's head is in ``response``. The answer to a
        HEAD request ends with its head, whatever length it announces: a new parser reads the next one."""
        self._head, self._head_done, self._complete, self._decoder, self._pieces = {}, False, False, None, []
        with trio.move_on_after(self.timeout) as waited:
            try:
                await self.stream.send_all(request)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise httpx2.WriteError(f"{type(exc).__name__}: {exc}") from exc
        if waited.cancelled_caught:
            raise httpx2.WriteTimeout("timed out sending the request")
        read = 0
        while not self._head_done:
            if read > MAX_HEAD:
                raise httpx2.RemoteProtocolError(f"an answer's head over {MAX_HEAD} bytes")
            got = await self._read()
            if not got:
                raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
            read += got
        response._connection = self
        response.status_code = self._status
        if head_only:
            self._complete, self._pieces = True, []
            self._parser = httptools.HttpResponseParser(self)
        response.headers = self._head
        self._sized = (
            head_only or "content-length" in self._head or "chunked" in self._head.get("transfer-encoding", "")
        )
        encoding = self._head.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "deflate"):  # not asked for, but a server may send it anyway
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)
        elif encoding not in ("identity", ""):
            raise httpx2.DecodingError(f"an answer in {encoding!r}, which was not asked for")

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            if self._pieces:
                data, self._pieces = b"".join(self._pieces), []
                if self._decoder is not None:
                    data = self._decoder.decompress(data)
                if data:
                    yield data
            if self._complete:
                return
            if not await self._read():
                if self._sized:
                    raise httpx2.RemoteProtocolError("peer closed connection without sending complete message body")
                self._complete = True  # an answer without length ends where the connection does
                return

    async def _read(self) -> int:
        """Read and parse what came: how many bytes, 0 at the end of the connection."""
        with trio.move_on_after(self.timeout) as waited:
            try:
                data = await self.stream.receive_some(READ_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise httpx2.ReadError(f"{type(exc).__name__}: {exc}") from exc
        if waited.cancelled_caught:
            raise httpx2.ReadTimeout("timed out waiting for the answer")
        if not data:
            return 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise httpx2.RemoteProtocolError("the server switched protocols") from None
        except httptools.HttpParserError as exc:
            raise httpx2.RemoteProtocolError(f"malformed answer: {exc}") from None
        return len(data)

    def reusable(self) -> bool:
        """Its answer was read to the end, and the server keeps the connection open."""
        return self._complete and self._sized and self._keep_alive

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()


class LeanClient:
    """Requests to one origin (``base_url``'s scheme, host and port) over a pool of kept-alive connections.

    The same calls as ``httpx2.AsyncClient`` for what ``openai_raw`` asks (``stream``, ``post``, ``head``,
    ``aclose``); URLs must be on the origin. At most ``max_connections`` requests at once (the rest wait), at
    most ``max_idle`` connections kept, each for ``keepalive`` seconds.
    """

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int = 64,
        max_idle: int = 32,
        keepalive: float = 90.0,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.tls else 80)
        self.origin = f"{url.scheme}://{url.netloc}"
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        # Identity asked for: a compressed stream reaches us only as fast as the server's compressor lets it go
        # (without the header any coding is acceptable); gzip and deflate are still read if a server sends them.
        fixed = {
            "Host": host if default_port else f"{host}:{self.port}",
            "Accept": "*/*",
            "Accept-Encoding": "identity",
            "User-Agent": "appliance",
            **headers,
        }
        self._fixed = _head_lines(fixed)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.max_idle = max_idle
        self._slots = trio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._ssl: ssl.SSLContext | None = None

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, *, content: bytes = b"", headers: dict[str, str] | None = None
    ) -> AsyncIterator[Response]:
        """The answer with its head read and its body not yet: read it inside the block."""
        request = self._request(method, url, content, headers)
        async with self._slots:
            response = Response()
            connection = await self._send(request, response, method == "HEAD")
            try:
                yield response
            finally:
                await self._release(connection)

    async def post(self, url: str, *, content: bytes = b"", headers: dict[str, str] | None = None) -> Response:
        async with self.stream("POST", url, content=content, headers=headers) as response:
            await response.aread()
        return response

    async def head(self, url: str, *, headers: dict[str, str] | None = None) -> Response:
        async with self.stream("HEAD", url, headers=headers) as response:
            pass
        return response

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()

    def _request(self, method: str, url: str, content: bytes, headers: dict[str, str] | None) -> bytes:
        if not url.startswith(self.origin + "/"):
            raise ValueError(f"{url!r} is not on {self.origin}")
        target = url[len(self.origin) :]
        if any(c in target for c in " \r\n"):
            raise httpx2.InvalidURL(f"invalid characters in the path: {target!r}")
        extra = _head_lines(headers) if headers else b""
        head = b"%s %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n" % (
            method.encode("ascii"),
            target.encode("ascii"),
            self._fixed,
            extra,
            len(content),
        )
        return head + content

    async def _send(self, request: bytes, response: Response, head_only: bool) -> _Connection:
        """Send on a kept-alive connection, or a new one; a kept one the server closed meanwhile is retried
        once on a new connection when it broke before any answer came."""
        while self._idle:
            connection = self._idle.pop()
            if trio.current_time() - connection.idle_since > self.keepalive or connection.socket.is_readable():
                await connection.aclose()  # expired, or closed by the server (EOF is readable)
                continue
            try:
                return await self._exchange(connection, request, response, head_only)
            except (httpx2.WriteError, httpx2.ReadError, httpx2.RemoteProtocolError) as exc:
                await connection.aclose()
                if isinstance(exc, httpx2.RemoteProtocolError) and "without sending a response" not in str(exc):
                    raise  # a malformed answer is the server's, not a stale connection's
        return await self._exchange(await self._connect(), request, response, head_only)

    async def _exchange(
        self, connection: _Connection, request: bytes, response: Response, head_only: bool
    ) -> _Connection:
        try:
            await connection.exchange(request, response, head_only=head_only)
        except BaseException:
            await connection.aclose()
            raise
        return connection

    async def _release(self, connection: _Connection) -> None:
        if connection.reusable() and len(self._idle) < self.max_idle:
            connection.idle_since = trio.current_time()
            self._idle.append(connection)
        else:
            await connection.aclose()

    async def _connect(self) -> _Connection:
        with trio.move_on_after(self.connect_timeout) as waited:
            try:
                tcp = await trio.open_tcp_stream(self.host, self.port)
            except OSError as exc:
                raise httpx2.ConnectError(f"{type(exc).__name__}: {exc}") from exc
            stream: trio.abc.Stream = tcp
            if self.tls:
                if self._ssl is None:
                    self._ssl = httpx2.create_ssl_context()
                    self._ssl.set_alpn_protocols(["http/1.1"])
                stream = trio.SSLStream(tcp, self._ssl, server_hostname=self.host, https_compatible=True)
                try:
                    await stream.do_handshake()
                except (trio.BrokenResourceError, OSError, ssl.SSLError) as exc:
                    await tcp.aclose()
                    raise httpx2.ConnectError(f"TLS: {exc}") from exc
        if waited.cancelled_caught:
            raise httpx2.ConnectTimeout(f"no connection to {self.origin} within {self.connect_timeout:g} s")
        return _Connection(stream, tcp.socket, self.timeout)


def _head_lines(headers: dict[str, str]) -> bytes:
    """Header lines; a name or value that could end its line (CR, LF) or its name (colon) is refused."""
    lines = []
    for name, value in headers.items():
        if any(c in name for c in ":\r\n ") or "\r" in value or "\n" in value:
            raise httpx2.LocalProtocolError(f"header {name!r} has characters that would break the request")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")
