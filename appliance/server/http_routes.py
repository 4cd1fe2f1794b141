"""The routes of the HTTP API (:mod:`appliance.server.http_api` guards them and serves them).

Bodies are read here, by hand, rather than by FastAPI's models: so the content type is checked first (415),
the size is counted as it arrives (413, whatever Content-Length claimed), a client that trickles its body is
cut off after ``start_timeout`` (408), and every malformed field gets a 400 that names it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any, Protocol

import trio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from appliance.agent.image_tool import check_picture
from appliance.agent.tools import ToolError
from appliance.audio.base import CAPTURE_RATE, AudioClip
from appliance.audio.convert import AudioFormatError, decode_wav, encode_wav, resample
from appliance.brains.avatar_protocol import ProtocolError, b64decode
from appliance.errors import ProviderError
from appliance.server.http_turns import Emit, HttpRequest, HttpTurns, envelope
from appliance.server.sse import SseResponse
from appliance.settings.brains import ServerConfig
from appliance.turns import Brain, Image, Utterance

MAX_IMAGES = 4
IMAGE_BYTES = 8 * 1024 * 1024  # all pictures of one request, decoded
LOOK_TEXT = "(Here is the picture.)"
_DATA_URL = re.compile(r"data:(image/(?:png|jpeg|webp|gif));base64,(.+)", re.DOTALL)


class HttpAvatarServer(Protocol):
    """What the routes need of :class:`appliance.server.http_api.HttpAvatarServer`."""

    brain: Brain
    config: ServerConfig
    turns: HttpTurns


log = logging.getLogger(__name__)


class BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def read_body(request: Request, timeout: float, kinds: tuple[str, ...]) -> bytes:
    """The whole body, if its type is one of ``kinds``, it fits the route's limit and arrives in time."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in kinds:
        raise BadRequest(415, f"Content-Type must be {' or '.join(kinds)}")
    limit = request.scope.get("state", {}).get("body_limit", 0)
    parts: list[bytes] = []
    size = 0
    with trio.move_on_after(timeout) as slow:
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise BadRequest(413, f"request body over {limit} bytes")
            parts.append(part)
    if slow.cancelled_caught:
        raise BadRequest(408, f"the request body did not arrive within {timeout:g} s")
    return b"".join(parts)


async def read_json(request: Request, timeout: float) -> dict[str, Any]:
    body = await read_body(request, timeout, ("application/json",))
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(400, "malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return data


def _str(data: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None or (value == "" and not required):
        if required:
            raise BadRequest(400, f"{key} is required.")
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(400, f"{key} must be a non-empty string")
    return value


def _params(data: dict[str, Any], key: str) -> dict[str, str]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(400, f"{key} must be an object")
    return {str(k): str(v) for k, v in value.items()}


def decode_audio(data: bytes, max_pcm: int, what: str) -> AudioClip:
    """A WAV (any rate, resampled by the STT) or, as AIAvatarKit's client sends, raw 16 kHz 16-bit PCM."""
    try:
        clip = decode_wav(data, name=what) if data[:4] == b"RIFF" else AudioClip.from_pcm(data, CAPTURE_RATE)
    except (AudioFormatError, ValueError) as exc:
        raise BadRequest(400, str(exc)) from None
    if len(clip.samples) == 0:
        raise BadRequest(400, f"{what} holds no audio")
    if clip.duration > max_pcm / 2 / CAPTURE_RATE:
        raise BadRequest(413, f"{what} is longer than {max_pcm / 2 / CAPTURE_RATE:g} s")
    if clip.sample_rate != CAPTURE_RATE:  # an utterance is 16 kHz, as the robot's mic captures it
        clip = AudioClip(resample(clip.samples, clip.sample_rate, CAPTURE_RATE), CAPTURE_RATE)
    return clip


async def read_images(files: Any) -> tuple[Image, ...]:
    """AIAvatarKit's ``files``: ``[{"type": "image", "url": "data:image/png;base64,..."}]``, each checked to be
    a picture small enough to show a model. Addresses are refused: the server fetches nothing it is told to."""
    if files is None or files == []:
        return ()
    if not isinstance(files, list):
        raise BadRequest(400, "files must be a list")
    if len(files) > MAX_IMAGES:
        raise BadRequest(413, f"files: at most {MAX_IMAGES} pictures")
    images = [_data_image(item, f"files[{index}]") for index, item in enumerate(files)]
    if sum(len(image.data) for image in images) > IMAGE_BYTES:
        raise BadRequest(413, f"files: pictures over {IMAGE_BYTES} bytes in all")
    for index, image in enumerate(images):
        try:
            await trio.to_thread.run_sync(check_picture, image.data)  # PIL reads the header: a bomb is refused
        except ToolError as exc:
            raise BadRequest(400, f"files[{index}]: {exc}") from None
    return tuple(images)


def _data_image(item: Any, where: str) -> Image:
    if not isinstance(item, dict) or not isinstance(item.get("url"), str):
        raise BadRequest(400, f"{where} must be an object with a 'url'")
    if item.get("type", "image") != "image":
        raise BadRequest(400, f"{where}.type: only 'image' files are served")
    found = _DATA_URL.fullmatch(item["url"].strip())
    if found is None:
        raise BadRequest(400, f"{where}.url: only data:image/(png|jpeg|webp|gif);base64 URLs (nothing is fetched)")
    try:
        return Image(b64decode(found.group(2), f"{where}.url"), found.group(1))
    except ProtocolError as exc:
        raise BadRequest(400, str(exc)) from None


def _error(status: int, detail: str) -> Any:
    return JSONResponse({"error": detail, "detail": detail}, status_code=status)


def create_app(server: HttpAvatarServer) -> FastAPI:
    app = FastAPI(title="appliance serve (HTTP)", docs_url=None, redoc_url=None, openapi_url=None)
    cfg = server.config
    max_pcm = int(cfg.max_audio_seconds * CAPTURE_RATE) * 2
    turns = server.turns

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> Any:
        return _error(exc.status, exc.detail)

    @app.post("/start")
    async def start(request: Request) -> Any:
        data = await read_json(request, cfg.start_timeout)
        req = _session_request(data, None)

        async def connected(emit: Emit) -> None:
            await emit(envelope("connected", req))

        return SseResponse(connected)

    @app.post("/chat")
    async def chat(request: Request) -> Any:
        data = await read_json(request, cfg.start_timeout)
        text = _str(data, "text")
        images = await read_images(data.get("files"))
        audio = None
        if not text and images and data.get("audio_data") is None:
            text = LOOK_TEXT  # AIAvatarKit's answer to a `vision` frame: the picture alone
        if not text:
            encoded = data.get("audio_data")
            if encoded is None:
                raise BadRequest(400, "text or audio_data is required.")
            if isinstance(encoded, str) and len(encoded) * 3 // 4 > max_pcm * 6 + 1024:
                raise BadRequest(413, f"audio_data is longer than {cfg.max_audio_seconds:g} s")
            try:
                raw = b64decode(encoded, "audio_data")
            except ProtocolError as exc:
                raise BadRequest(400, str(exc)) from None
            audio = decode_audio(raw, max_pcm, "audio_data")
        req = _session_request(data, Utterance(audio=audio, text=text, source="remote"))
        req.images = images
        _check_capacity(server)
        return SseResponse(lambda emit: turns.reply(req, emit))

    @app.post("/chat-messages")
    async def chat_messages(request: Request) -> Any:
        return await _dify(server, await read_json(request, cfg.start_timeout))

    add_speech_routes(app, server, max_pcm)
    return app


def _session_request(data: dict[str, Any], utterance: Utterance | None) -> HttpRequest:
    session_id = _str(data, "session_id", required=True) or ""
    return HttpRequest(
        session_id,
        _str(data, "user_id"),
        _str(data, "context_id"),
        utterance,
        _params(data, "system_prompt_params"),
    )


def _check_capacity(server: HttpAvatarServer) -> None:
    limit = server.config.max_connections * server.config.max_sessions
    if server.turns.busy() >= limit:
        raise BadRequest(503, f"the server is answering {limit} requests already; try again shortly")


async def _dify(server: HttpAvatarServer, data: dict[str, Any]) -> Any:
    """Dify's chat-messages, streaming: ``message`` events with ``answer``, then ``message_end``."""
    query = _str(data, "query", required=True) or ""
    user = _str(data, "user") or "user"
    conversation_id = _str(data, "conversation_id") or uuid.uuid4().hex
    mode = data.get("response_mode", "streaming")
    if mode not in ("streaming", None):
        raise BadRequest(400, "only response_mode 'streaming' is served")
    req = HttpRequest(
        f"dify:{conversation_id}",
        user,
        conversation_id,
        Utterance(text=query, source="remote"),
        _params(data, "inputs"),
    )
    _check_capacity(server)
    message_id = str(uuid.uuid4())
    created_at = int(time.time())
    common = {"message_id": message_id, "conversation_id": conversation_id, "created_at": created_at}

    async def produce(emit: Emit) -> None:
        async def as_dify(frame: dict[str, Any]) -> None:
            if frame["type"] == "chunk" and frame["text"]:
                await emit({"event": "message", **common, "answer": frame["text"]})
            elif frame["type"] in ("final", "canceled"):
                await emit({"event": "message_end", **common, "metadata": {}})
            elif frame["type"] == "error":
                error = frame["metadata"].get("error", "error")
                await emit({"event": "error", **common, "status": 502, "code": "provider_error", "message": error})

        await server.turns.reply(req, as_dify)

    return SseResponse(produce, event_names=True)


def add_speech_routes(app: FastAPI, server: HttpAvatarServer, max_pcm: int) -> None:
    timeout = server.config.start_timeout

    async def transcribe(clip: AudioClip) -> dict[str, Any]:
        stt = getattr(server.brain, "stt", None)
        if stt is None:
            raise BadRequest(501, "this server's brain has no speech recognition")
        try:
            return {"text": await stt.transcribe(clip, getattr(server.brain, "language", None))}
        except ProviderError as exc:
            raise BadRequest(502, str(exc)) from None

    async def synthesize(data: dict[str, Any]) -> Any:
        text = _str(data, "text", required=True) or ""
        tts = getattr(server.brain, "tts", None)
        if tts is None:
            raise BadRequest(501, "this server's brain has no speech synthesis")
        try:
            clip = await tts.synthesize(text)
        except ProviderError as exc:
            raise BadRequest(502, str(exc)) from None
        if not isinstance(clip, AudioClip):  # a streaming voice
            clip = await clip.read_all()
        headers = {"Content-Disposition": "attachment; filename=voice.wav"}
        return Response(encode_wav(clip), media_type="audio/wav", headers=headers)

    @app.post("/stt")
    async def stt(request: Request) -> Any:
        body = await read_body(request, timeout, ("audio/wav", "audio/x-wav", "audio/wave", "application/octet-stream"))
        return await transcribe(decode_audio(body, max_pcm, "the body"))

    @app.post("/transcribe")
    async def transcribe_form(request: Request) -> Any:
        body = await read_body(request, timeout, ("multipart/form-data",))
        audio = await _multipart_file(request, body, "audio")
        return await transcribe(decode_audio(audio, max_pcm, "audio"))

    @app.post("/tts")
    async def tts(request: Request) -> Any:
        return await synthesize(await read_json(request, timeout))

    @app.post("/synthesize")
    async def synthesize_route(request: Request) -> Any:
        return await synthesize(await read_json(request, timeout))


async def _multipart_file(request: Request, body: bytes, field: str) -> bytes:
    """The named file of a multipart body already read (and size-checked)."""
    from starlette.requests import Request as StarletteRequest

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await StarletteRequest(request.scope, replay).form(max_files=2, max_fields=10)
    except Exception as exc:  # noqa: BLE001  (the multipart parser's errors have no common base)
        raise BadRequest(400, f"malformed multipart body: {exc}") from None
    upload = form.get(field)
    if upload is None or isinstance(upload, str):
        raise BadRequest(400, f"a file field named {field!r} is required")
    return await upload.read()
