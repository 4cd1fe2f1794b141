"""The lean HTTP client the OpenAI providers use (``appliance/providers/lean_http.py``) against a hostile server:
answers malformed, endless, cut short, silent, closed while kept, without length, compressed; requests cancelled
mid-answer; headers that would break the request. Its failures are httpx2's, so ``http_errors`` maps them as
before. The providers' own behaviour against the fake cloud is in ``test_providers_*.py``."""

from __future__ import annotations

import gzip
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx2
import pytest
import trio
import trio.testing

from appliance.errors import ProviderBadReply, ProviderUnavailable
from appliance.providers.http_errors import provider_errors
from appliance.providers.lean_http import MAX_HEAD, LeanClient
from tests.fakes.tcp import read_until, refused_port

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"


@dataclass
class Server:
    """Answers each request with the next of ``answers`` (bytes, or a callable given the stream); records which
    connection (by number) carried each request and what it sent."""

    answers: list[bytes | Callable[[trio.SocketStream], object]]
    port: int = 0
    connections: list[int] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, stream: trio.SocketStream) -> None:
        number = id(stream)
        buffer = b""
        try:
            while self.answers:
                if (request := await read_until(stream, buffer, b"\r\n\r\n")) is None:
                    return
                head, buffer = request
                length = int(
                    next(
                        (h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), b"0"
                    )
                )
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                buffer = buffer[length:]
                self.connections.append(number)
                answer = self.answers.pop(0)
                if callable(answer):
                    if await answer(stream) == "close":  # type: ignore[func-returns-value]
                        return
                else:
                    await stream.send_all(answer)
        finally:
            await stream.aclose()


@asynccontextmanager
async def serving(*answers: bytes | Callable[[trio.SocketStream], object]) -> AsyncIterator[tuple[Server, LeanClient]]:
    server = Server(list(answers))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        server.port = listeners[0].socket.getsockname()[1]
        client = LeanClient(
            f"http://127.0.0.1:{server.port}/v1", {"Authorization": "Bearer k"}, timeout=5, connect_timeout=5
        )
        yield server, client
        await client.aclose()
        nursery.cancel_scope.cancel()


def url(server: Server, path: str = "/v1/x") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def test_one_request_is_one_write_with_its_headers_and_a_kept_connection() -> None:
    async with serving(OK, OK) as (server, client):
        first = await client.post(url(server), content=b'{"a": 1}', headers={"Content-Type": "application/json"})
        second = await client.post(url(server), content=b"")
    assert first.status_code == 200 and first.content == b"hello" and second.content == b"hello"
    assert server.connections == [server.connections[0]] * 2  # the second went on the kept connection
    head = server.requests[0].decode()
    assert head.startswith("POST /v1/x HTTP/1.1\r\n") and "Authorization: Bearer k\r\n" in head
    assert "Content-Type: application/json" in head and head.endswith('\r\n\r\n{"a": 1}')
    assert "Accept-Encoding: identity\r\n" in head and f"Host: 127.0.0.1:{server.port}\r\n" in head


async def test_an_interim_answer_is_skipped_for_the_real_one() -> None:
    interim = b"HTTP/1.1 100 Continue\r\nx-note: wait\r\n\r\n"
    async with serving(interim + OK, OK) as (server, client):
        first = await client.post(url(server))
        assert first.status_code == 200 and first.content == b"hello" and "x-note" not in first.headers
        assert (await client.post(url(server))).content == b"hello"
    assert len(set(server.connections)) == 1


async def test_a_malformed_answer_is_a_protocol_error_mapped_as_httpx2s() -> None:
    async with serving(b"HTTQ/9 what\r\n\r\n") as (server, client):
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.post(url(server))
        with pytest.raises(ProviderUnavailable), provider_errors("test"):
            await client.post(url(server))  # the server is gone now: a connection error, mapped


async def test_a_head_that_never_ends_is_refused_not_buffered() -> None:
    endless = b"HTTP/1.1 200 OK\r\n" + b"x-junk: " + b"j" * (MAX_HEAD * 2)

    async def answer(stream: trio.SocketStream) -> str:
        await stream.send_all(endless)
        await trio.sleep_forever()
        return "close"

    async with serving(answer) as (server, client):
        with pytest.raises(httpx2.RemoteProtocolError, match="head over"):
            await client.post(url(server))


async def test_a_body_cut_short_is_a_cut_stream() -> None:
    async def answer(stream: trio.SocketStream) -> str:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        return "close"

    async with serving(answer) as (server, client):
        with pytest.raises(ProviderBadReply, match="cut short"), provider_errors("test"):
            async with client.stream("POST", url(server)) as response:
                assert response.status_code == 200
                async for _ in response.aiter_bytes():
                    pass


async def test_a_silent_server_is_a_read_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async def answer(stream: trio.SocketStream) -> str:
        await trio.sleep_forever()
        return "close"

    async with serving(answer) as (server, client):
        with pytest.raises(httpx2.ReadTimeout):
            await client.post(url(server))


async def test_connection_close_and_an_answer_without_length_are_not_kept() -> None:
    async def until_close(stream: trio.SocketStream) -> str:
        await stream.send_all(b"HTTP/1.1 200 OK\r\n\r\nto the end")
        return "close"

    async with serving(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi", until_close, OK) as (
        server,
        client,
    ):
        assert (await client.post(url(server))).content == b"hi"
        assert (await client.post(url(server))).content == b"to the end"
        assert (await client.post(url(server))).content == b"hello"
    assert len(set(server.connections)) == 3


async def test_a_kept_connection_the_server_closed_is_replaced() -> None:
    """Closed while idle (seen as readable), or closed or reset on receiving the request before any answer: the
    request goes out again on a new connection, once."""

    async def answer_then_close(stream: trio.SocketStream) -> str:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi")
        return "close"

    async def close_now(stream: trio.SocketStream) -> str:
        return "close"

    async def reset_now(stream: trio.SocketStream) -> str:  # RST, not FIN: the client's read fails
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return "close"

    async with serving(answer_then_close, OK, close_now, OK, reset_now, OK) as (server, client):
        assert (await client.post(url(server))).content == b"hi"
        await trio.sleep(0.1)  # the close reaches the kept connection
        assert (await client.post(url(server))).content == b"hello"
        assert (await client.post(url(server), content=b"again")).content == b"hello"
        assert (await client.post(url(server), content=b"once more")).content == b"hello"
    assert server.requests[-1].endswith(b"once more") and len(set(server.connections)) == 4


async def test_a_compressed_answer_is_read_and_an_unknown_encoding_refused() -> None:
    packed = gzip.compress(b"hello " * 100)
    gz = b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s" % (len(packed), packed)
    br = b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\ncontent-length: 1\r\n\r\nx"
    async with serving(gz, br) as (server, client):
        assert (await client.post(url(server))).content == b"hello " * 100
        with pytest.raises(httpx2.DecodingError):
            await client.post(url(server))


async def test_a_request_cancelled_mid_answer_drops_its_connection() -> None:
    async def slow(stream: trio.SocketStream) -> str:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await trio.sleep_forever()
        return "close"

    async with serving(slow, OK) as (server, client):
        with trio.move_on_after(0.5):
            async with client.stream("POST", url(server)) as response:
                async for piece in response.aiter_bytes():
                    assert piece == b"first"
        assert (await client.post(url(server))).content == b"hello"
    assert len(set(server.connections)) == 2  # the half-read one was not reused


async def test_a_head_answer_ends_with_its_head_and_the_connection_stays_usable() -> None:
    async with serving(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n", OK) as (server, client):
        assert (await client.head(url(server))).status_code == 200
        assert (await client.post(url(server))).content == b"hello"
    assert len(set(server.connections)) == 1


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer k\r\nX-Evil: 1"}, {"X-Id": "a\nb"}, {"Bad:Name": "v"}],
)
async def test_a_header_that_would_break_the_request_is_refused_before_sending(headers: dict[str, str]) -> None:
    async with serving(OK) as (server, client):
        with pytest.raises(httpx2.LocalProtocolError):
            await client.post(url(server), headers=headers)
        with pytest.raises(httpx2.LocalProtocolError):
            LeanClient(url(server, "/v1"), headers, timeout=5, connect_timeout=5)
    assert server.requests == []


async def test_a_url_off_the_origin_or_with_spaces_is_refused() -> None:
    async with serving(OK) as (server, client):
        with pytest.raises(ValueError):
            await client.post("http://example.com/v1/x")
        with pytest.raises(httpx2.InvalidURL):
            await client.post(url(server, "/v1/a b\r\nX: y"))
    assert server.requests == []


async def test_nobody_listening_is_a_connect_error() -> None:
    port = refused_port()
    client = LeanClient(f"http://127.0.0.1:{port}", {}, timeout=5, connect_timeout=5)
    with pytest.raises(httpx2.ConnectError):
        await client.post(f"http://127.0.0.1:{port}/x")


async def test_https_checks_the_certificate_and_keeps_its_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS as httpx2 sets it up (its CA store, ``SSL_CERT_FILE``): a server our CA signed is spoken to on one kept
    connection; one we cannot verify is a connect error, nothing sent."""
    import ssl

    from tests.mqtt_broker import make_certificates

    certs = make_certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    server = Server([OK, OK])
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, server.handle, 0, context, host="127.0.0.1"))
        server.port = listeners[0].transport_listener.socket.getsockname()[1]
        base = f"https://localhost:{server.port}"
        monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
        client = LeanClient(base, {}, timeout=5, connect_timeout=5)
        assert (await client.post(base + "/a")).content == b"hello"
        assert (await client.post(base + "/b")).content == b"hello"
        await client.aclose()
        monkeypatch.delenv("SSL_CERT_FILE")
        stranger = LeanClient(base, {}, timeout=5, connect_timeout=5)
        with pytest.raises(httpx2.ConnectError):
            await stranger.post(base + "/c")
        nursery.cancel_scope.cancel()
    assert len(server.requests) == 2 and len(set(server.connections)) == 1
    assert b"Host: localhost:%d" % server.port in server.requests[0]
