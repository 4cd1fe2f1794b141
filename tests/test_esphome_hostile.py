"""Hostile ESPHome clients: bad framing, huge frames, garbage, silence, a client that never reads, too many
clients. Each ends its own connection with a log line; the server (and the robot) go on."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from appliance.integrations.esphome.frames import (
    MAX_PAYLOAD,
    FrameError,
    PlainTransport,
    Reader,
    varint,
)
from appliance.integrations.esphome.messages import pb, type_of
from tests.esphome_helpers import KEY, esphome_appliance, home_assistant


def frame(message: object) -> bytes:
    return PlainTransport().encode(type_of(message), message.SerializeToString())  # type: ignore[attr-defined]


HELLO = frame(pb.HelloRequest(client_info="hostile", api_version_major=1, api_version_minor=10))


async def ended(stream: trio.SocketStream) -> bytes:
    """Read until the server closes the connection; returns what it sent."""
    got = bytearray()
    with trio.fail_after(20):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return bytes(got)
            if not data:
                return bytes(got)
            got += data


async def logged(caplog: pytest.LogCaptureFixture, text: str, count: int = 1) -> None:
    """The server logs a connection's end just after closing it: wait for the line."""
    with trio.fail_after(10):
        while caplog.text.count(text) < count:
            await trio.sleep(0.02)


async def still_serving(server: object) -> None:
    async with home_assistant(server.port) as ha:  # type: ignore[attr-defined]
        assert (await ha.run(lambda: ha.client.device_info())).name == "robot"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x00" + varint(MAX_PAYLOAD + 1) + varint(1), "over the"),
        (b"\x07hello", "bad preamble"),
        (b"\x00\xff\xff\xff\xff\xff", "varint too long"),
        (frame(pb.PingRequest()), "before HelloRequest"),
        (b"\x00" + varint(3) + varint(1) + b"\xff\xff\xff", "undecodable"),
        (b"\x01\x00\x00", "wants encryption"),
    ],
)
async def test_bad_frames_end_only_that_connection(
    payload: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with esphome_appliance() as (app, _log, server, _sink):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(payload)
        await ended(stream)
        await logged(caplog, reason)
        await still_serving(server)
        assert app.supervisor.records["esphome"].status == "running"


async def test_unknown_message_types_are_ignored() -> None:
    async with esphome_appliance() as (_app, _log, server, _sink):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(HELLO + b"\x00" + varint(2) + varint(9999) + b"hi" + frame(pb.PingRequest()))
        reader = Reader(stream)
        transport = PlainTransport()
        with trio.fail_after(10):
            kinds = [(await transport.receive(reader))[0] for _ in range(2)]
        assert kinds == [type_of(pb.HelloResponse()), type_of(pb.PingResponse())]
        await stream.aclose()


async def test_a_client_that_never_reads_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    async with esphome_appliance(write_timeout=0.5) as (app, _log, server, _sink):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        # Tens of MB of answers for a few hundred kB of questions, and we never read one of them.
        try:
            await stream.send_all(HELLO + frame(pb.ListEntitiesRequest()) * 60_000)
        except trio.BrokenResourceError:
            pass  # dropped while we were still asking
        with trio.fail_after(20):
            while "not reading" not in caplog.text:
                await trio.sleep(0.05)
        await stream.aclose()
        await still_serving(server)
        assert app.supervisor.records["esphome"].status == "running"


async def test_a_silent_client_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    async with esphome_appliance(idle_timeout=0.3) as (_app, _log, server, _sink):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(HELLO)
        await ended(stream)
        await logged(caplog, "silent for 0.3 s")
        idle = await trio.open_tcp_stream("127.0.0.1", server.port)  # not even a hello
        await ended(idle)
        await logged(caplog, "silent for 0.3 s", 2)
    async with esphome_appliance(idle_timeout=0.3, encryption_key=KEY) as (_app, _log, server, _sink):
        idle = await trio.open_tcp_stream("127.0.0.1", server.port)  # a Noise handshake that never comes
        await ended(idle)
        await logged(caplog, "handshake not finished")


async def test_too_many_clients_are_refused() -> None:
    async with esphome_appliance(max_connections=2) as (_app, _log, server, _sink):
        first = await trio.open_tcp_stream("127.0.0.1", server.port)
        second = await trio.open_tcp_stream("127.0.0.1", server.port)
        await first.send_all(HELLO)
        await second.send_all(HELLO)
        with trio.fail_after(10):
            while len(server.connections) < 2:
                await trio.sleep(0.02)
        third = await trio.open_tcp_stream("127.0.0.1", server.port)
        assert await ended(third) == b""
        assert server.refused == 1
        for stream in (first, second):
            await stream.aclose()


async def test_garbage_noise_handshake_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    async with esphome_appliance(encryption_key=KEY) as (_app, _log, server, _sink):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"\x01\x00\x00" + b"\x01\x00\x05\x00abcd")
        answer = await ended(stream)
        assert b"Handshake MAC failure" in answer
        assert KEY not in caplog.text
        async with home_assistant(server.port, KEY) as ha:
            assert (await ha.run(lambda: ha.client.device_info())).name == "robot"


async def test_plain_framing_round_trip_and_limits() -> None:
    left, right = trio.testing.memory_stream_pair()
    transport = PlainTransport()
    await left.send_all(transport.encode(7, b"x" * 300) + transport.encode(8, b""))
    reader = Reader(right)
    assert await transport.receive(reader) == (7, b"x" * 300)
    assert await transport.receive(reader) == (8, b"")
    await left.send_all(b"\x00" + varint(MAX_PAYLOAD + 1) + varint(1))
    with pytest.raises(FrameError):
        await transport.receive(reader)
    assert [varint(v) for v in (0, 127, 128, 300)] == [b"\x00", b"\x7f", b"\x80\x01", b"\xac\x02"]


async def _noise_client(port: int) -> tuple[trio.SocketStream, object, Reader]:
    """A hand-made Noise client (the noiseprotocol package as initiator) that completes the handshake."""
    import binascii

    from noise.connection import NoiseConnection

    noise = NoiseConnection.from_name(b"Noise_NNpsk0_25519_ChaChaPoly_SHA256")
    noise.set_as_initiator()
    noise.set_psks(binascii.a2b_base64(KEY))
    noise.set_prologue(b"NoiseAPIInit\x00\x00")
    noise.start_handshake()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    first = b"\x00" + noise.write_message()
    await stream.send_all(b"\x01\x00\x00" + b"\x01" + len(first).to_bytes(2, "big") + first)
    reader = Reader(stream)
    for _ in range(2):
        header = await reader.exactly(3)
        body = await reader.exactly(int.from_bytes(header[1:], "big"))
    noise.read_message(body[1:])
    assert noise.handshake_finished
    return stream, noise, reader


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda noise: b"\xde\xad" * 20, "failed to decrypt"),
        (lambda noise: noise.encrypt(b"\x00\x01\x00\x09hi"), "does not match"),
        (lambda noise: noise.encrypt(b"\x00"), "too short"),
    ],
)
async def test_forged_noise_frames_end_the_connection(
    make,
    reason: str,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    async with esphome_appliance(encryption_key=KEY) as (_app, _log, server, _sink):
        stream, noise, _reader = await _noise_client(server.port)
        data = make(noise)
        await stream.send_all(b"\x01" + len(data).to_bytes(2, "big") + data)
        await ended(stream)
        await logged(caplog, reason)
        await still_serving_encrypted(server)


async def still_serving_encrypted(server: object) -> None:
    async with home_assistant(server.port, KEY) as ha:  # type: ignore[attr-defined]
        assert (await ha.run(lambda: ha.client.device_info())).name == "robot"
