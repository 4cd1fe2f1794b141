"""The bench's fake cloud without a web framework: the three OpenAI endpoints a turn calls, on bare Trio sockets.

``tests/fakes/cloud.py`` (Starlette on hypercorn) is the fake the tests use: it records requests, misbehaves on
demand and speaks Anthropic too. In ``bench serve --load`` it spent about 9 ms of CPU a turn, more than the server
measured (8 ms), and ten robots at once share two cores with it: the bench then measures its own fake cloud as
much as the server. This one answers the same bytes at the same pace (issue 23's waits counted from each
request's arrival, the same reply in the same word pieces, the same tone for the speech in the same 100 ms
pieces) with a few hundred microseconds of work per request. It only serves well-formed HTTP/1.1 from our own
clients; it is a bench part, not a test fake. ``python -m bench.lean_cloud --reuse-port`` prints its URL.
"""

from __future__ import annotations

import json
import math
import socket
import time
from functools import cache

import numpy as np
import trio

from bench.common import wav_bytes
from tests.fakes.cloud_cli import fake_cloud_arguments

PCM_RATE = 24_000
TRANSCRIPT = "What time is it?"
REPLY = "[face:joy] It is nine o'clock. Time for breakfast! [animation:wave] Have a nice day."
SECONDS_PER_CHAR = 0.01
PIECE = 4800  # bytes of speech a piece: 100 ms at 24 kHz
MAX_HEAD = 64 * 1024


@cache
def tone(samples: int) -> bytes:
    t = np.arange(samples) / PCM_RATE
    return (0.3 * 32767 * np.sin(2 * math.pi * 440.0 * t)).astype("<i2").tobytes()


def _sse(value: object) -> bytes:
    return b"data: " + json.dumps(value).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class LeanCloud:
    def __init__(self, stt: float, llm: float, tts: float, token_delay: float, piece_delay: float) -> None:
        self.latency = {"transcriptions": stt, "completions": llm, "speech": tts}
        self.token_delay = token_delay
        self.piece_delay = piece_delay

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        try:
            while True:
                while (end := buffer.find(b"\r\n\r\n")) < 0:
                    if len(buffer) > MAX_HEAD or not (data := await stream.receive_some(65536)):
                        return
                    buffer += data
                arrived = time.monotonic()
                head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
                del buffer[: end + 4]
                method, target = head[0].split(" ")[:2]
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
                body = await self._body(stream, buffer, headers)
                await self._answer(stream, method, target.split("?")[0], body, arrived)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            return
        finally:
            await stream.aclose()

    async def _body(self, stream: trio.SocketStream, buffer: bytearray, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                while (eol := buffer.find(b"\r\n")) < 0:
                    buffer += await stream.receive_some(65536)
                size = int(bytes(buffer[:eol]).split(b";")[0], 16)
                while len(buffer) < eol + 2 + size + 2:
                    buffer += await stream.receive_some(65536)
                body += buffer[eol + 2 : eol + 2 + size]
                del buffer[: eol + 2 + size + 2]
                if size == 0:
                    return bytes(body)
        length = int(headers.get("content-length", "0"))
        while len(buffer) < length:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionError("closed mid-body")
            buffer += data
        body = bytes(buffer[:length])
        del buffer[:length]
        return body

    async def _answer(self, stream: trio.SocketStream, method: str, path: str, body: bytes, arrived: float) -> None:
        kind = path.rsplit("/", 1)[-1]
        if kind == "models":
            await self._whole(stream, b'{"object": "list", "data": []}', b"application/json", method == "HEAD")
            return
        if method != "POST" or kind not in self.latency:
            await stream.send_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            return
        began = arrived + self.latency[kind]  # the wait counts from arrival, not from when this Python got to it
        await trio.sleep(max(0.0, began - time.monotonic()))
        if kind == "transcriptions":
            await self._whole(stream, json.dumps({"text": TRANSCRIPT}).encode(), b"application/json")
        elif kind == "completions":
            request = json.loads(body)
            await self._stream(stream, self._chat(request.get("model")), b"text/event-stream", began, self.token_delay)
        else:
            request = json.loads(body)
            pcm = tone(int(max(0.05, len(request.get("input", "")) * SECONDS_PER_CHAR) * PCM_RATE))
            wav = request.get("response_format") == "wav"
            data, media = (wav_bytes(pcm, PCM_RATE), b"audio/wav") if wav else (pcm, b"audio/pcm")
            pieces = [data[i : i + PIECE] for i in range(0, len(data), PIECE)]
            await self._stream(stream, pieces, media, began, self.piece_delay)

    @staticmethod
    def _chat(model: object) -> list[bytes]:
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        words = REPLY.split(" ")
        deltas = [
            {"role": "assistant", "content": ""},
            *({"content": (" " if i else "") + w} for i, w in enumerate(words)),
        ]
        pieces = [_sse({**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}) for d in deltas]
        pieces.append(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        return [*pieces, b"data: [DONE]\n\n"]

    @staticmethod
    async def _whole(stream: trio.SocketStream, data: bytes, media: bytes, head_only: bool = False) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (media, len(data))
        await stream.send_all(head if head_only else head + data)

    @staticmethod
    async def _stream(stream: trio.SocketStream, pieces: list[bytes], media: bytes, began: float, delay: float) -> None:
        """Each piece as an HTTP chunk, ``delay`` apart (paced from the start, so sleeps' overshoot does not add)."""
        head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        if not delay:
            await stream.send_all(head % media + b"".join(_chunk(p) for p in pieces) + b"0\r\n\r\n")
            return
        await stream.send_all(head % media + _chunk(pieces[0]))
        for i, piece in enumerate(pieces[1:], 1):
            await trio.sleep(max(0.0, began + i * delay - time.monotonic()))
            await stream.send_all(_chunk(piece))
        await stream.send_all(b"0\r\n\r\n")


def main() -> None:
    parser = fake_cloud_arguments("the bench's lean fake OpenAI cloud on 127.0.0.1")
    args = parser.parse_args()
    cloud = LeanCloud(args.stt_latency, args.llm_latency, args.tts_latency, args.token_delay, args.tts_piece_delay)

    async def run() -> None:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if args.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind(("127.0.0.1", args.port))
        sock.listen(256)
        print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
        await trio.serve_listeners(cloud.serve_connection, [trio.SocketListener(sock)])

    trio.run(run)


if __name__ == "__main__":
    main()
