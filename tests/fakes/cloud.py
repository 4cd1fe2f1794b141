"""A fake of the cloud APIs the appliance uses, as a real HTTP server on 127.0.0.1.

It speaks the wire formats the official SDKs expect — OpenAI ``/v1/audio/transcriptions``,
``/v1/chat/completions`` (SSE streaming), ``/v1/audio/speech`` (pcm / wav), Anthropic ``/v1/messages``
(SSE event stream) — and can be told, per endpoint, to be slow, fail with a status code, cut its stream,
or hang. It records every request and notices when a client goes away mid-stream.

In tests: ``async with fake_cloud() as cloud: ... cloud.url``. For benchmarks in a separate process:
``python -m tests.fakes.cloud --port 0`` prints the URL it serves on.
"""

from __future__ import annotations

import io
import json
import math
import socket
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from appliance.audio.base import AudioClip
from appliance.audio.convert import encode_wav
from tests.fakes.cloud_cli import fake_cloud_arguments

PCM_RATE = 24_000


@dataclass
class Behaviour:
    """How one endpoint misbehaves. The defaults answer at once and correctly."""

    latency: float = 0.0  # seconds before the response starts (time to first byte)
    status: int | None = None  # answer with this HTTP error instead
    retry_after: float | None = None  # Retry-After header with the error
    cut: str | None = None  # "abort": drop the connection mid-stream; "truncate": end early, cleanly
    cut_at_byte: int | None = None  # drop the connection after exactly this many body bytes...
    cut_skip: int = 0  # ... of every stream but the first ``cut_skip`` ones
    streams: int = 0  # streams started so far
    hang: bool = False  # never answer (headers never come)
    hang_mid_stream: bool = False  # send part of the stream, then go silent
    token_delay: float = 0.0  # seconds between streamed deltas
    fail_times: int | None = None  # fail only for the next N requests, then behave
    malformed: bool = False  # answer 200 with a body the provider's client cannot parse
    message: str = "fake failure"  # the error's text (real APIs echo parts of the request, keys included)


@dataclass
class Recorded:
    """One request as the server saw it; times are ``time.monotonic()``, comparable across processes."""

    path: str
    body: Any
    at: float
    first_byte_at: float | None = None
    finished_at: float | None = None
    sent_at: list[float] = field(default_factory=list)  # when each piece of a streamed reply went out


@dataclass
class FakeCloud:
    transcript: str = "What time is it?"
    reply: str = "[face:joy] It is nine o'clock. Time for breakfast! [animation:wave] Have a nice day."
    seconds_per_char: float = 0.01
    tts_piece_bytes: int = 4800  # speech goes out in pieces this big (100 ms at 24 kHz)
    stt: Behaviour = field(default_factory=Behaviour)
    llm: Behaviour = field(default_factory=Behaviour)
    tts: Behaviour = field(default_factory=Behaviour)
    anthropic: Behaviour = field(default_factory=Behaviour)
    # Tool calling: when the request offers tools and has no tool result yet, call this tool instead of
    # answering; once a result comes back, answer ``tool_reply`` with ``{result}`` filled in.
    tool_call: tuple[str, dict[str, Any]] | None = None
    tool_reply: str = "The tool says {result}."
    image_reply: str | None = None  # the answer when the request carries an image (vision)
    requests: list[Recorded] = field(default_factory=list)
    disconnects: int = 0
    completed_streams: int = 0
    url: str = ""

    def __post_init__(self) -> None:
        self.disconnected = trio.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/audio/transcriptions", self._transcriptions, methods=["POST"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/audio/speech", self._speech, methods=["POST"]),
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/_fake/requests", self._log, methods=["GET"]),
            ]
        )
        inner = self.app

        async def stamp(scope: Any, receive: Any, send: Any) -> None:
            # The moment the request reached the application: everything before it is the client's share.
            scope["fake.arrived"] = time.monotonic()
            await inner(scope, receive, send)

        self.asgi = stamp

    # --- serving ---------------------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reuse_port: bool = False,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled. ``reuse_port``: several fakes (processes) may listen on one port, the kernel
        sharing the connections among them, so a benchmark's many clients do not queue behind one Python."""
        config = HypercornConfig()
        config.bind = [f"{host}:{port}"]
        if reuse_port:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the descriptor from here
        config.accesslog = None
        config.errorlog = None
        config.keep_alive_timeout = 30

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, self.asgi, config)  # type: ignore[arg-type]
            self.url = binds[0]
            task_status.started(self.url)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.path == path]

    def reset(self) -> None:
        self.requests.clear()
        self.disconnects = 0
        self.completed_streams = 0
        self.disconnected = trio.Event()
        for b in (self.stt, self.llm, self.tts, self.anthropic):
            b.__init__()  # type: ignore[misc]

    # --- shared behaviour -----------------------------------------------------------------------------

    async def _misbehave(
        self, behaviour: Behaviour, anthropic_style: bool = False, arrived: float | None = None
    ) -> Response | None:
        if behaviour.latency:
            # ``latency`` is time to first byte counted from the request's arrival, like a real cloud's: the
            # fake's own parsing happens inside it, so a benchmark that subtracts the configured latency does
            # not charge the firmware for this server's Python.
            start = time.monotonic() if arrived is None else arrived
            await trio.sleep(max(0.0, start + behaviour.latency - time.monotonic()))
        if behaviour.hang:
            await trio.sleep_forever()
        if behaviour.status is not None and (behaviour.fail_times is None or behaviour.fail_times > 0):
            if behaviour.fail_times is not None:
                behaviour.fail_times -= 1
            headers = {}
            if behaviour.retry_after is not None:
                headers["retry-after"] = f"{behaviour.retry_after:g}"
            if anthropic_style:
                body = {
                    "type": "error",
                    "error": {"type": _anthropic_error(behaviour.status), "message": behaviour.message},
                }
            else:
                body = {"error": {"message": behaviour.message, "type": "fake_error", "code": str(behaviour.status)}}
            return JSONResponse(body, status_code=behaviour.status, headers=headers)
        return None

    def _stream(
        self,
        pieces: list[bytes],
        behaviour: Behaviour,
        media_type: str,
        record: Recorded | None = None,
        first_content: int = 0,
    ) -> StreamingResponse:
        """Stream ``pieces``; ``record.first_byte_at`` is stamped when piece ``first_content`` goes out."""

        behaviour.streams += 1
        cut_at = behaviour.cut_at_byte if behaviour.streams > behaviour.cut_skip else None

        async def body() -> AsyncIterator[bytes]:
            finished = False
            sent = 0
            # The pace is set from when the first byte was due (arrival + latency), not from when this server's
            # Python got round to it: a fake that is slower than told must not be counted as the client's time.
            began = time.monotonic() if record is None else min(time.monotonic(), record.at + behaviour.latency)
            try:
                half = max(1, len(pieces) // 2)
                for i, piece in enumerate(pieces):
                    if cut_at is not None and sent + len(piece) > cut_at:
                        if cut_at > sent:
                            yield piece[: cut_at - sent]
                        raise ConnectionAbortedError("fake cloud cut the stream")
                    sent += len(piece)
                    if i == half and behaviour.cut == "abort":
                        raise ConnectionAbortedError("fake cloud cut the stream")
                    if i == half and behaviour.cut == "truncate":
                        finished = True
                        return
                    if i == half and behaviour.hang_mid_stream:
                        await trio.sleep_forever()
                    if i and behaviour.token_delay:
                        # Paced against the stream's start, so the sleeps' own overshoot does not add up.
                        await trio.sleep(max(0.0, began + i * behaviour.token_delay - time.monotonic()))
                    if record is not None:
                        record.sent_at.append(time.monotonic())
                        if i == first_content:
                            record.first_byte_at = record.sent_at[-1]
                    yield piece
                finished = True
                self.completed_streams += 1
                if record is not None:
                    record.finished_at = time.monotonic()
            finally:
                if not finished:
                    self.disconnects += 1
                    self.disconnected.set()

        return StreamingResponse(body(), media_type=media_type, headers={"cache-control": "no-cache"})

    async def _record(self, request: Request, body: Any) -> Recorded:
        record = Recorded(request.url.path, body, request.scope.get("fake.arrived", time.monotonic()))
        self.requests.append(record)
        return record

    async def _log(self, request: Request) -> Response:
        """The request log, for a benchmark in another process to subtract the server's own time."""
        return JSONResponse(
            [
                {
                    "path": r.path,
                    "at": r.at,
                    "first_byte_at": r.first_byte_at,
                    "sent_at": r.sent_at,
                    "input": r.body.get("input") if isinstance(r.body, dict) else None,
                    "audio": {k: r.body[k] for k in ("seconds", "rms_db", "peak_db")}
                    if isinstance(r.body, dict) and "seconds" in r.body
                    else None,
                }
                for r in self.requests
            ]
        )

    # --- OpenAI --------------------------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        await self._record(request, None)
        return JSONResponse(
            {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]}
        )

    async def _transcriptions(self, request: Request) -> Response:
        form = await request.form()
        upload = form.get("file")
        audio = await upload.read() if upload is not None and hasattr(upload, "read") else b""
        heard = _measure_wav(audio)
        record = await self._record(
            request,
            {"model": form.get("model"), "language": form.get("language"), "bytes": len(audio), **(heard or {})},
        )
        if failure := await self._misbehave(self.stt, arrived=record.at):
            return failure
        record.first_byte_at = time.monotonic()
        if heard is None:
            return JSONResponse({"error": {"message": "Invalid file format.", "type": "invalid_request_error"}}, 400)
        return JSONResponse({"text": self.transcript})

    def _deltas(self, tool_result: str | None = None, has_image: bool = False) -> list[str]:
        text = self.tool_reply.format(result=tool_result) if tool_result is not None else self.reply
        if has_image and self.image_reply is not None:
            text = self.image_reply
        words = text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        record = await self._record(request, body)
        if failure := await self._misbehave(self.llm, arrived=record.at):
            return failure
        created = int(time.time())
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.get("model"),
        }
        if not body.get("stream"):
            message = {"role": "assistant", "content": self.reply}
            return JSONResponse(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
        pieces = [
            _sse(
                {
                    **base,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                }
            )
        ]
        if self.llm.malformed:
            pieces.append(b"data: {not json\n\n")
            return self._stream(pieces, self.llm, "text/event-stream")
        results = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "tool"]
        if self.tool_call and body.get("tools") and not results:
            name, args = self.tool_call
            encoded = json.dumps(args)
            half = len(encoded) // 2
            for i, part in enumerate((encoded[:half], encoded[half:])):  # arguments arrive in fragments
                call = {"index": 0, "function": {"arguments": part}}
                if i == 0:
                    call.update({"id": "call_fake1", "type": "function", "function": {"name": name, "arguments": part}})
                pieces.append(
                    _sse({**base, "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]})
                )
            pieces.append(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}))
            pieces.append(b"data: [DONE]\n\n")
            return self._stream(pieces, self.llm, "text/event-stream")
        has_image = any(
            isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
            for m in body.get("messages", [])
        )
        for delta in self._deltas(results[-1] if results else None, has_image):
            pieces.append(_sse({**base, "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}]}))
        pieces.append(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        pieces.append(b"data: [DONE]\n\n")
        return self._stream(pieces, self.llm, "text/event-stream", record, first_content=1)

    async def _speech(self, request: Request) -> Response:
        body = await request.json()
        record = await self._record(request, body)
        if failure := await self._misbehave(self.tts, arrived=record.at):
            return failure
        text = body.get("input", "")
        if not text:
            return JSONResponse({"error": {"message": "input is empty", "type": "invalid_request_error"}}, 400)
        pcm = tone(max(0.05, len(text) * self.seconds_per_char))
        if body.get("response_format") == "wav":
            data, media = encode_wav(AudioClip(np.frombuffer(pcm, dtype=np.int16), PCM_RATE)), "audio/wav"
        else:
            data, media = pcm, "audio/pcm"
        step = self.tts_piece_bytes
        return self._stream([data[i : i + step] for i in range(0, len(data), step)], self.tts, media, record)

    # --- Anthropic -----------------------------------------------------------------------------------

    async def _messages(self, request: Request) -> Response:
        body = await request.json()
        await self._record(request, body)
        if failure := await self._misbehave(self.anthropic, anthropic_style=True):
            return failure
        model = body.get("model")
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 0},
        }
        pieces = [_event("message_start", {"type": "message_start", "message": message})]
        if self.anthropic.malformed:
            pieces.append(b"event: content_block_delta\ndata: {broken\n\n")
            return self._stream(pieces, self.anthropic, "text/event-stream")
        results = [
            part.get("content", "")
            for m in body.get("messages", [])
            if isinstance(m.get("content"), list)
            for part in m["content"]
            if part.get("type") == "tool_result"
        ]
        if self.tool_call and body.get("tools") and not results:
            name, args = self.tool_call
            encoded = json.dumps(args)
            half = len(encoded) // 2
            pieces.append(
                _event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "tool_use", "id": "toolu_fake1", "name": name, "input": {}},
                    },
                )
            )
            for part in (encoded[:half], encoded[half:]):
                pieces.append(
                    _event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "input_json_delta", "partial_json": part},
                        },
                    )
                )
            pieces += [
                _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                _event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                        "usage": {"output_tokens": 10},
                    },
                ),
                _event("message_stop", {"type": "message_stop"}),
            ]
            return self._stream(pieces, self.anthropic, "text/event-stream")
        pieces.append(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
        )
        for delta in self._deltas(results[-1] if results else None):
            pieces.append(
                _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta}},
                )
            )
        pieces += [
            _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 10},
                },
            ),
            _event("message_stop", {"type": "message_stop"}),
        ]
        return self._stream(pieces, self.anthropic, "text/event-stream")


def _measure_wav(data: bytes) -> dict[str, float] | None:
    """What the recogniser was given: length, RMS and peak level (dBFS) of a mono s16 WAV; None if not one.

    Recorded with the request so a test can check the robot sent the speech it heard, not silence or a stub.
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError):
        return None
    if width != 2 or channels < 1 or rate <= 0:
        return {"seconds": 0.0, "rms_db": -100.0, "peak_db": -100.0, "rate": float(rate)}
    samples = np.frombuffer(frames[: len(frames) - len(frames) % (2 * channels)], dtype="<i2").astype(np.float64)
    samples = samples[::channels]
    if samples.size == 0:
        return {"seconds": 0.0, "rms_db": -100.0, "peak_db": -100.0, "rate": float(rate)}
    rms = math.sqrt(float(np.mean(samples**2))) / 32768
    peak = float(np.max(np.abs(samples))) / 32768
    return {
        "seconds": samples.size / rate,
        "rms_db": 20 * math.log10(rms) if rms > 1e-5 else -100.0,
        "peak_db": 20 * math.log10(peak) if peak > 1e-5 else -100.0,
        "rate": float(rate),
    }


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _anthropic_error(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")


def tone(seconds: float, freq: float = 440.0, rate: int = PCM_RATE) -> bytes:
    """A sine tone as s16le PCM: stands in for speech (non-silent, so level meters move)."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * 32767 * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()


@asynccontextmanager
async def fake_cloud(**settings: Any) -> AsyncIterator[FakeCloud]:
    cloud = FakeCloud(**settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(cloud.serve)
        yield cloud
        nursery.cancel_scope.cancel()


def _main() -> None:
    parser = fake_cloud_arguments("fake OpenAI/Anthropic cloud on 127.0.0.1")
    args = parser.parse_args()

    async def run() -> None:
        cloud = FakeCloud()
        cloud.stt.latency, cloud.llm.latency, cloud.tts.latency = args.stt_latency, args.llm_latency, args.tts_latency
        cloud.llm.token_delay = args.token_delay
        cloud.tts.token_delay = args.tts_piece_delay
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(cloud.serve, "127.0.0.1", args.port, reuse_port=args.reuse_port))
            print(url, flush=True)

    trio.run(run)


if __name__ == "__main__":
    _main()
