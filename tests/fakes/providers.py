"""Fakes of the other speech and language services, on the same real server as :mod:`tests.fakes.cloud`.

Each route speaks its service's real wire format: Google Gemini ``streamGenerateContent?alt=sse``, Dify
``/v1/chat-messages`` (SSE ``message``/``message_end``), VOICEVOX/AivisSpeech ``/audio_query`` +
``/synthesis``, Azure Speech STT (short-audio REST) and TTS (SSML), Google Speech-to-Text ``speech:recognize``
and Text-to-Speech ``text:synthesize``, AmiVoice ``/v1/nolog/recognize`` (multipart, errors in ``code``), and
a generic HTTP TTS (``/tts``, JSON in, WAV out). Every one checks its credential the way the real one does
(``KEY`` is the good one) and obeys a :class:`Behaviour` in ``behaviours[name]``: latency, error status with
Retry-After, cut streams, and ``malformed`` for a 200 answer its client cannot use.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.cloud import PCM_RATE, Behaviour, FakeCloud, _sse, tone

KEY = "test-key"
NAMES = ("gemini", "dify", "voicevox", "azure_stt", "azure_tts", "google_stt", "google_tts", "amivoice", "http_tts")

_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def wav_bytes(seconds: float, rate: int = PCM_RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(tone(seconds, rate=rate))
    return buf.getvalue()


@dataclass
class FakeProviders(FakeCloud):
    behaviours: dict[str, Behaviour] = field(default_factory=lambda: {n: Behaviour() for n in NAMES})
    dify_conversation: str = ""
    dify_files: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        add = self.app.add_route
        add("/v1beta/models/{model_action}", self._gemini, methods=["POST"])
        add("/v1/chat-messages", self._dify, methods=["POST"])
        add("/v1/files/upload", self._dify_upload, methods=["POST"])
        add("/audio_query", self._audio_query, methods=["POST"])
        add("/synthesis", self._synthesis, methods=["POST"])
        add("/speech/recognition/conversation/cognitiveservices/v1", self._azure_stt, methods=["POST"])
        add("/cognitiveservices/v1", self._azure_tts, methods=["POST"])
        add("/v1/speech:recognize", self._google_stt, methods=["POST"])
        add("/v1/text:synthesize", self._google_tts, methods=["POST"])
        add("/v1/nolog/recognize", self._amivoice, methods=["POST"])
        add("/tts", self._http_tts, methods=["POST", "GET"])

    def reset(self) -> None:
        super().reset()
        for b in self.behaviours.values():
            b.__init__()  # type: ignore[misc]

    async def _fail(self, name: str, style: str) -> Response | None:
        b = self.behaviours[name]
        if b.latency:
            await trio.sleep(b.latency)
        if b.hang:
            await trio.sleep_forever()
        if b.status is None or (b.fail_times is not None and b.fail_times <= 0):
            return None
        if b.fail_times is not None:
            b.fail_times -= 1
        return self._error(style, b.status, "fake failure", b.retry_after)

    def _error(self, style: str, status: int, message: str, retry_after: float | None = None) -> Response:
        headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
        if style == "google":
            body: Any = {"error": {"code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}}
        elif style == "dify":
            body = {"code": "unauthorized" if status == 401 else "error", "message": message, "status": status}
        elif style == "voicevox":
            body = {"detail": message}
        else:  # azure answers errors with an empty body
            return Response(b"", status_code=status, headers=headers)
        return JSONResponse(body, status_code=status, headers=headers)

    # --- Gemini ------------------------------------------------------------------------------------

    async def _gemini(self, request: Request) -> Response:
        body = await request.json()
        await self._record(request, body)
        model, _, action = request.path_params["model_action"].partition(":")
        if action != "streamGenerateContent" or request.query_params.get("alt") != "sse":
            return self._error("google", 404, f"unknown action {action!r}")
        if request.headers.get("x-goog-api-key") != KEY:
            return self._error("google", 400, "API key not valid. Please pass a valid API key.")
        if failure := await self._fail("gemini", "google"):
            return failure
        behaviour = self.behaviours["gemini"]
        if behaviour.malformed:
            return self._stream([b'data: {"candidates": [\n\n'], behaviour, "text/event-stream")
        results = [
            p["functionResponse"]["response"]
            for c in body.get("contents", [])
            for p in c.get("parts", [])
            if "functionResponse" in p
        ]
        usage = {"promptTokenCount": 5, "candidatesTokenCount": 5, "totalTokenCount": 10}
        if self.tool_call and body.get("tools") and not results:
            name, args = self.tool_call
            chunk = {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"functionCall": {"name": name, "args": args}}]},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": usage,
                "modelVersion": model,
            }
            return self._stream([_sse(chunk)], behaviour, "text/event-stream")
        tool_result = None
        if results:
            tool_result = results[-1].get("result", results[-1].get("error"))
        deltas = self._deltas(tool_result)
        pieces = []
        for i, delta in enumerate(deltas):
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": delta}]}, "index": 0}
            if i == len(deltas) - 1:
                candidate["finishReason"] = "STOP"
            pieces.append(_sse({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model}))
        return self._stream(pieces, behaviour, "text/event-stream")

    # --- Dify --------------------------------------------------------------------------------------

    async def _dify(self, request: Request) -> Response:
        body = await request.json()
        await self._record(request, body)
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return self._error("dify", 401, "Access token is invalid")
        if failure := await self._fail("dify", "dify"):
            return failure
        behaviour = self.behaviours["dify"]
        if not body.get("query") or body.get("response_mode") != "streaming" or "user" not in body:
            return self._error("dify", 400, "query, user and response_mode are required")
        conversation = body.get("conversation_id") or self.dify_conversation or uuid.uuid4().hex
        self.dify_conversation = conversation
        ids = {"task_id": "t1", "message_id": "m1", "conversation_id": conversation, "created_at": 1}
        pieces = [b"event: ping\n\n"]
        if behaviour.malformed:
            pieces.append(b'data: {"event": "message", "answer": \n\n')
            return self._stream(pieces, behaviour, "text/event-stream")
        for delta in self._deltas():
            pieces.append(_sse({"event": "message", "answer": delta, **ids}))
        pieces.append(_sse({"event": "message_end", "metadata": {"usage": {"total_tokens": 10}}, **ids}))
        return self._stream(pieces, behaviour, "text/event-stream")

    async def _dify_upload(self, request: Request) -> Response:
        form = await request.form()
        upload = form.get("file")
        data = await upload.read() if upload is not None and hasattr(upload, "read") else b""
        await self._record(
            request, {"user": form.get("user"), "bytes": len(data), "type": getattr(upload, "content_type", None)}
        )
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return self._error("dify", 401, "Access token is invalid")
        if not data or not form.get("user"):
            return self._error("dify", 400, "file and user are required")
        self.dify_files.append(data)
        return JSONResponse(
            {
                "id": f"file-{len(self.dify_files)}",
                "name": "camera.jpg",
                "size": len(data),
                "extension": "jpg",
                "mime_type": "image/jpeg",
                "created_by": 1,
                "created_at": 1,
            },
            201,
        )

    # --- VOICEVOX / AivisSpeech ---------------------------------------------------------------------

    def _voicevox_auth(self, request: Request) -> Response | None:
        auth = request.headers.get("authorization")
        if auth is not None and auth != f"Bearer {KEY}":  # the local engine has no auth; the cloud one does
            return self._error("voicevox", 401, "invalid API key")
        return None

    async def _audio_query(self, request: Request) -> Response:
        text, speaker = request.query_params.get("text", ""), request.query_params.get("speaker")
        await self._record(request, {"text": text, "speaker": speaker})
        if denied := self._voicevox_auth(request):
            return denied
        if failure := await self._fail("voicevox", "voicevox"):
            return failure
        if speaker is None or not speaker.isdigit():
            return JSONResponse({"detail": [{"loc": ["query", "speaker"], "msg": "field required"}]}, 422)
        if self.behaviours["voicevox"].malformed:
            return JSONResponse({"nonsense": True})
        moras = [{"text": c, "vowel": "a", "vowel_length": 0.1, "pitch": 5.5} for c in text]
        return JSONResponse(
            {
                "accent_phrases": [{"moras": moras, "accent": 1}],
                "speedScale": 1.0,
                "pitchScale": 0.0,
                "intonationScale": 1.0,
                "volumeScale": 1.0,
                "prePhonemeLength": 0.1,
                "postPhonemeLength": 0.1,
                "outputSamplingRate": 24000,
                "outputStereo": False,
                "kana": text,
            }
        )

    async def _synthesis(self, request: Request) -> Response:
        query = await request.json()
        await self._record(request, query)
        if denied := self._voicevox_auth(request):
            return denied
        text = "".join(m["text"] for p in query.get("accent_phrases", []) for m in p.get("moras", []))
        seconds = max(0.05, len(text) * self.seconds_per_char / max(query.get("speedScale", 1.0), 0.1))
        data = wav_bytes(seconds, 24000)
        return self._stream(
            [data[i : i + 4800] for i in range(0, len(data), 4800)], self.behaviours["voicevox"], "audio/wav"
        )

    # --- Azure ------------------------------------------------------------------------------------

    async def _azure_stt(self, request: Request) -> Response:
        audio = await request.body()
        await self._record(
            request,
            {
                "language": request.query_params.get("language"),
                "bytes": len(audio),
                "content_type": request.headers.get("content-type"),
            },
        )
        if request.headers.get("ocp-apim-subscription-key") != KEY:
            return self._error("azure", 401, "")
        if failure := await self._fail("azure_stt", "azure"):
            return failure
        try:
            with wave.open(io.BytesIO(audio), "rb") as w:
                w.getnframes()
        except (wave.Error, EOFError):
            return self._error("azure", 400, "")
        if self.behaviours["azure_stt"].malformed:
            return JSONResponse({"RecognitionStatus": "Success"})
        return JSONResponse(
            {"RecognitionStatus": "Success", "DisplayText": self.transcript, "Offset": 100000, "Duration": 12000000}
        )

    async def _azure_tts(self, request: Request) -> Response:
        ssml = (await request.body()).decode()
        await self._record(request, {"ssml": ssml, "format": request.headers.get("x-microsoft-outputformat")})
        if request.headers.get("ocp-apim-subscription-key") != KEY:
            return self._error("azure", 401, "")
        if failure := await self._fail("azure_tts", "azure"):
            return failure
        if "<speak" not in ssml or "<voice" not in ssml:
            return self._error("azure", 400, "")
        if self.behaviours["azure_tts"].malformed:
            return Response(b"RIFF\x00\x00garbage", media_type="audio/x-wav")
        data = wav_bytes(max(0.05, len(ssml) * self.seconds_per_char / 4), 24000)
        return self._stream(
            [data[i : i + 4800] for i in range(0, len(data), 4800)], self.behaviours["azure_tts"], "audio/x-wav"
        )

    # --- Google speech ----------------------------------------------------------------------------

    async def _google_stt(self, request: Request) -> Response:
        body = await request.json()
        await self._record(
            request,
            {"config": body.get("config"), "bytes": len(base64.b64decode(body.get("audio", {}).get("content", "")))},
        )
        if request.headers.get("x-goog-api-key") != KEY:
            return self._error("google", 403, "The request is missing a valid API key.")
        if failure := await self._fail("google_stt", "google"):
            return failure
        if self.behaviours["google_stt"].malformed:
            return Response(b"<html>proxy error</html>", media_type="text/html")
        return JSONResponse(
            {
                "results": [
                    {
                        "alternatives": [{"transcript": self.transcript, "confidence": 0.93}],
                        "resultEndTime": "1.2s",
                        "languageCode": "en-us",
                    }
                ],
                "totalBilledTime": "2s",
                "requestId": "1",
            }
        )

    async def _google_tts(self, request: Request) -> Response:
        body = await request.json()
        await self._record(request, body)
        if request.headers.get("x-goog-api-key") != KEY:
            return self._error("google", 403, "The request is missing a valid API key.")
        if failure := await self._fail("google_tts", "google"):
            return failure
        if self.behaviours["google_tts"].malformed:
            return JSONResponse({"audioContent": "!!not base64!!"})
        text = body.get("input", {}).get("text", "")
        rate = body.get("audioConfig", {}).get("sampleRateHertz", 24000)
        data = wav_bytes(max(0.05, len(text) * self.seconds_per_char), rate)
        return JSONResponse({"audioContent": base64.b64encode(data).decode()})

    # --- AmiVoice ---------------------------------------------------------------------------------

    async def _amivoice(self, request: Request) -> Response:
        form = await request.form()
        upload = form.get("a")
        audio = await upload.read() if upload is not None and hasattr(upload, "read") else b""
        await self._record(request, {"d": form.get("d"), "bytes": len(audio)})
        if form.get("u") != KEY:
            return JSONResponse(
                {
                    "results": [{"tokens": [], "text": ""}],
                    "text": "",
                    "code": "-",
                    "message": "received illegal service authorization",
                    "utteranceid": "",
                }
            )
        if failure := await self._fail("amivoice", "voicevox"):
            return failure
        if self.behaviours["amivoice"].malformed:
            return JSONResponse({"results": [], "code": "", "message": ""})
        if not audio:
            return JSONResponse({"results": [], "text": "", "code": "+", "message": "received empty audio data"})
        return JSONResponse(
            {
                "results": [
                    {
                        "tokens": [],
                        "confidence": 0.99,
                        "starttime": 0,
                        "endtime": 1000,
                        "tags": [],
                        "rulename": "",
                        "text": self.transcript,
                    }
                ],
                "utteranceid": "20260101/ja_ja-amivoice",
                "text": self.transcript,
                "code": "",
                "message": "",
            }
        )

    # --- generic HTTP TTS (SpeechGateway-like) -------------------------------------------------

    async def _http_tts(self, request: Request) -> Response:
        if request.method == "GET":
            body: Any = {"text": request.query_params.get("text", ""), "voice": request.query_params.get("voice")}
        else:
            try:
                body = json.loads(await request.body())
            except ValueError:
                return JSONResponse({"error": "body is not JSON"}, 400)
        await self._record(request, body)
        if request.headers.get("x-api-key") not in (None, KEY):
            return JSONResponse({"error": "bad key"}, 401)
        if failure := await self._fail("http_tts", "voicevox"):
            return failure
        if self.behaviours["http_tts"].malformed:
            return Response(b"not audio at all", media_type="audio/wav")
        text = body.get("text", "")
        if not text:
            return JSONResponse({"error": "text is empty"}, 400)
        data = wav_bytes(max(0.05, len(text) * self.seconds_per_char), 22050)
        return self._stream(
            [data[i : i + 4410] for i in range(0, len(data), 4410)], self.behaviours["http_tts"], "audio/wav"
        )


@asynccontextmanager
async def fake_providers(**settings: Any) -> AsyncIterator[FakeProviders]:
    fake = FakeProviders(**settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="fake speech/LLM providers on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--llm-latency", type=float, default=0.0)
    parser.add_argument("--tts-latency", type=float, default=0.0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args()

    async def run() -> None:
        fake = FakeProviders()
        for b in (fake.llm, fake.anthropic, fake.behaviours["gemini"], fake.behaviours["dify"]):
            b.latency, b.token_delay = args.llm_latency, args.token_delay
        for b in (fake.tts, *(fake.behaviours[n] for n in ("voicevox", "azure_tts", "google_tts", "http_tts"))):
            b.latency = args.tts_latency
        async with trio.open_nursery() as nursery:
            url = await nursery.start(fake.serve, "127.0.0.1", args.port)
            print(url, flush=True)

    trio.run(run)


if __name__ == "__main__":
    _main()
