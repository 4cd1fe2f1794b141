"""The ESPHome native API's two framings over one TCP stream, server side.

Plaintext: ``0x00``, varint payload length, varint message type, protobuf payload.
Noise (``Noise_NNpsk0_25519_ChaChaPoly_SHA256``): ``0x01``, 16-bit big-endian frame length, frame. The client
opens with an empty hello frame and a handshake frame (``0x00`` + Noise message); we answer with our hello
(protocol ``0x01``, name, MAC) and our half of the handshake, or ``0x01`` + "Handshake MAC failure" when its
key differs from ours. After that each frame is the encrypted ``type(16) length(16) payload``.

Every limit is checked before anything is allocated: a hostile client gets a :class:`FrameError`, which
ends its connection and nothing else.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

log = logging.getLogger(__name__)

MAX_PAYLOAD = 65_535  # what aioesphomeapi itself accepts in a plaintext frame
_MAX_VARINT_BYTES = 4  # 28 bits: more than any length we accept
_READ_SIZE = 16_384
_NOISE_NAME = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
_NOISE_OVERHEAD = 4 + 16  # type + length header, AEAD tag
_MAC_FAILURE = b"Handshake MAC failure"


class FrameError(Exception):
    """The peer broke the framing (or the handshake); the connection ends."""


class Reader:
    """Buffered exact reads from a Trio stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def _fill(self) -> None:
        data = await self.stream.receive_some(_READ_SIZE)
        if not data:
            raise EOFError
        self._buffer += data

    async def exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            await self._fill()
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def varint(self) -> int:
        value = 0
        for index in range(_MAX_VARINT_BYTES):
            byte = (await self.exactly(1))[0]
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                return value
        raise FrameError("varint too long")


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class Transport(Protocol):
    encrypted: bool

    async def handshake(self, reader: Reader, stream: trio.abc.SendStream) -> None: ...

    async def receive(self, reader: Reader) -> tuple[int, bytes]: ...

    def encode(self, msg_type: int, payload: bytes) -> bytes: ...


class PlainTransport:
    encrypted = False

    async def handshake(self, reader: Reader, stream: trio.abc.SendStream) -> None:
        return None

    async def receive(self, reader: Reader) -> tuple[int, bytes]:
        preamble = (await reader.exactly(1))[0]
        if preamble == 0x01:
            raise FrameError("the client wants encryption; no encryption_key is configured")
        if preamble != 0x00:
            raise FrameError(f"bad preamble 0x{preamble:02x}")
        length = await reader.varint()
        if length > MAX_PAYLOAD:
            raise FrameError(f"frame of {length} bytes is over the {MAX_PAYLOAD} limit")
        msg_type = await reader.varint()
        return msg_type, await reader.exactly(length) if length else b""

    def encode(self, msg_type: int, payload: bytes) -> bytes:
        return b"\x00" + varint(len(payload)) + varint(msg_type) + payload


def _noise_frame(data: bytes) -> bytes:
    return b"\x01" + len(data).to_bytes(2, "big") + data


class NoiseTransport:
    """The responder's side of the handshake aioesphomeapi initiates, on the ``noiseprotocol`` package."""

    encrypted = True

    def __init__(self, psk: bytes, name: str, mac: str) -> None:
        if len(psk) != 32:
            raise ValueError("the Noise key must be 32 bytes")
        self._psk = psk
        self._name = name.encode()
        self._mac = mac.encode()
        self._noise = None

    async def _frame(self, reader: Reader) -> bytes:
        header = await reader.exactly(3)
        if header[0] == 0x00:
            raise FrameError("plaintext client, but this device requires encryption")
        if header[0] != 0x01:
            raise FrameError(f"bad preamble 0x{header[0]:02x}")
        return await reader.exactly(int.from_bytes(header[1:], "big"))

    async def handshake(self, reader: Reader, stream: trio.abc.SendStream) -> None:
        from noise.connection import NoiseConnection

        try:
            hello = await self._frame(reader)
        except FrameError as exc:
            if "plaintext" in str(exc):
                # An empty Noise frame: aioesphomeapi's plaintext client reads it as "the device needs a key".
                await stream.send_all(b"\x01\x00\x00")
            raise
        noise = NoiseConnection.from_name(_NOISE_NAME)
        noise.set_as_responder()
        noise.set_psks(self._psk)
        noise.set_prologue(b"NoiseAPIInit" + len(hello).to_bytes(2, "big") + hello)
        noise.start_handshake()
        await stream.send_all(_noise_frame(b"\x01" + self._name + b"\x00" + self._mac + b"\x00"))
        message = await self._frame(reader)
        if not message or message[0] != 0x00:
            raise FrameError("bad handshake frame")
        try:
            noise.read_message(message[1:])
        except Exception:  # noqa: BLE001 - InvalidTag from cryptography, NoiseValueError...: all mean a wrong key
            await stream.send_all(_noise_frame(b"\x01" + _MAC_FAILURE))
            raise FrameError("handshake failed: the client's encryption key differs from ours") from None
        await stream.send_all(_noise_frame(b"\x00" + noise.write_message()))
        if not noise.handshake_finished:
            raise FrameError("handshake did not finish")
        self._noise = noise

    async def receive(self, reader: Reader) -> tuple[int, bytes]:
        assert self._noise is not None
        frame = await self._frame(reader)
        try:
            data = self._noise.decrypt(frame)
        except Exception:  # noqa: BLE001 - a forged or replayed frame
            raise FrameError("frame failed to decrypt") from None
        if len(data) < 4:
            raise FrameError("decrypted frame too short")
        msg_type = int.from_bytes(data[0:2], "big")
        length = int.from_bytes(data[2:4], "big")
        if length != len(data) - 4:
            raise FrameError("frame length does not match its payload")
        return msg_type, bytes(data[4:])

    def encode(self, msg_type: int, payload: bytes) -> bytes:
        assert self._noise is not None
        if len(payload) > MAX_PAYLOAD - _NOISE_OVERHEAD:
            raise ValueError("message too large for one Noise frame")
        header = msg_type.to_bytes(2, "big") + len(payload).to_bytes(2, "big")
        return _noise_frame(self._noise.encrypt(header + payload))
