"""A strict fake AIAvatarKit (0.9.x) WebSocket server on 127.0.0.1, shaped by frames recorded from the real one.

``tests/fixtures/aiavatar/*.json`` hold what AIAvatarKit 0.9.2 itself sent (``make interop-record``). With
``replay=True`` this fake answers every ``invoke`` with exactly those frames (only the ids rewritten to the live
session's), one request after the other as the real server does (it reads nothing while it answers); in PCM
mode every text request gets the recorded first-request frames (no later-request PCM recording). Without
it, the fake makes up replies (``reply``/``stt`` functions, faults) in the recorded envelope: every field
present, ``null`` where the real server sends null, a ``stop`` without ``transaction_id`` before each reply,
sentence text ending in the space that followed it. ``tests/test_remote_replay.py`` checks that the made-up
frames still look like the recorded ones, so drift in either shows in the fast suite.

Strict: every client frame is checked (type, ``session_id``, field types, base64 PCM of whole samples, a
``start`` before anything else, no unknown keys) against this file's own list of types and fields, never our
client's; each breach is recorded in ``violations`` and answered the way the real server does (a ``final``
carrying an error, then close, when ``session_id`` is missing).

Real servers' quirks, each switchable in ``quirks``:
  ``empty_chunks``   empty ``chunk`` frames before the first sentence's tags
  ``no_first_start`` no ``start`` frame for a text ``invoke`` (the real server's ``start`` loses a race
                     with its own ``accepted`` and is dropped as stale)
  ``stop_first``     a ``stop`` without ``transaction_id`` before every reply (the server clearing the last)
  ``double_final``   two ``final`` frames after an interruption
  ``canceled_stt``   ``canceled`` when speech recognition finds nothing in the audio
(all on by default: a client must tolerate them; ``no_accepted``, never sending ``accepted``, is opt-in).
No pings of its own; pongs are automatic.

Faults to inject (``fault``): ``close_mid_reply``, ``silent`` (accepts, never answers), ``malformed``
(broken JSON instead of a chunk), ``unknown_types`` (frames of unknown types before the reply),
``error`` (an ``error`` frame), ``binary`` (a binary frame), ``stop`` (a ``stop`` after the first
sentence), ``foreign_stop`` (after each sentence a ``stop`` naming another transaction),
``drop_on_start`` (hangs up right after ``connected``). Replayed frames know ``silent`` and
``close_mid_reply``. A refused key is a handshake 403.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from appliance.audio.base import AudioClip
from appliance.audio.convert import encode_wav

ALL_QUIRKS = frozenset({"empty_chunks", "no_first_start", "stop_first", "double_final", "canceled_stt"})
RECORDINGS = Path(__file__).resolve().parent.parent / "fixtures" / "aiavatar"

# The protocol as AIAvatarKit 0.9.2 defines it (its request/response models), written down here on purpose:
# a fake that borrowed our client's lists would agree with the client by construction.
CLIENT_TYPES = frozenset({"start", "data", "invoke", "config", "stop"})
SERVER_TYPES = frozenset(
    {"connected", "voiced", "accepted", "start", "chunk", "tool_call", "final", "vision", "stop", "canceled", "error"}
)
RESPONSE_FIELDS = (
    "type",
    "session_id",
    "user_id",
    "context_id",
    "transaction_id",
    "text",
    "voice_text",
    "language",
    "control_tags",
    "avatar_control_request",
    "audio_data",
    "metadata",
    "structured_content",
)
_TAG = re.compile(r"\[(face|animation):([^\]]+)\]")


def recording(name: str) -> dict[str, Any]:
    """One recorded scenario: ``{"scenario", "aiavatar", "sent": [...], "received": [...]}``."""
    return json.loads((RECORDINGS / f"{name}.json").read_text())


def parse_tags(sentence: str) -> tuple[str, list[tuple[str, str]]]:
    """The fake's own reading of ``[face:joy]`` / ``[animation:wave]``: (the words to speak, [(name, value)])."""
    tags = [(m.group(1), m.group(2).strip()) for m in _TAG.finditer(sentence)]
    return " ".join(_TAG.sub(" ", sentence).split()), tags


_ALLOWED_KEYS = {
    "start": {"type", "session_id", "user_id", "context_id", "metadata"},
    "data": {"type", "session_id", "audio_data"},
    "invoke": {
        "type",
        "session_id",
        "user_id",
        "context_id",
        "text",
        "audio_data",
        "system_prompt_params",
        "files",
        "metadata",
    },
    "config": {"type", "session_id", "metadata"},
    "stop": {"type", "session_id"},
}


def _reply_frames(received: list[dict[str, Any]], skip_replies: int) -> list[dict[str, Any]]:
    """The frames of one request: after ``skip_replies`` complete replies, up to and with the next one's end."""
    out: list[dict[str, Any]] = []
    done = 0
    for frame in received:
        if frame["type"] == "connected":
            continue
        if done == skip_replies:
            out.append(frame)
        ends = frame["type"] in ("final", "canceled", "error") and not (frame.get("metadata") or {}).get("interrupted")
        if ends:
            done += 1
            if done > skip_replies:
                break
    return out


_REPLAYS = {  # what to replay: (recording, complete replies before the one wanted)
    "text_invoke": ("text_invoke", 0),
    "pcm_text_invoke": ("pcm_text_invoke", 0),
    "audio_invoke": ("audio_invoke", 0),
    "stt_failure": ("stt_failure", 0),
    "next_text_invoke": ("barge_in", 1),
    "next_audio_invoke": ("text_then_audio", 1),
}


def replayed_frames(name: str) -> list[dict[str, Any]]:
    recorded, skip = _REPLAYS[name]
    return _reply_frames(recording(recorded)["received"], skip)


def replayed_ids(name: str) -> dict[str, str | None]:
    """The recorded ids to replace: the session's, the reply's transaction and the one before it."""
    recorded, skip = _REPLAYS[name]
    received = recording(recorded)["received"]
    accepted = [f["transaction_id"] for f in received if f["type"] == "accepted"]
    accepted = list(dict.fromkeys(accepted))
    connected = received[0]
    contexts = [f["context_id"] for f in received if f.get("context_id")]
    return {
        "session_id": connected["session_id"],
        "user_id": connected["user_id"],
        "context_id": contexts[0] if contexts else None,
        "transaction_id": accepted[skip] if len(accepted) > skip else None,
        "previous_transaction_id": accepted[skip - 1] if skip else None,
    }


_CONTROL_FIELDS = ("animation_name", "animation_duration", "face_name", "face_duration")


def tone(seconds: float, rate: int = 24_000, freq: float = 440.0) -> AudioClip:
    t = np.arange(int(seconds * rate)) / rate
    return AudioClip((np.sin(2 * math.pi * freq * t) * 8000).astype(np.int16), rate)


def default_stt(pcm: bytes) -> str | None:
    """'Recognises' audio by its loudness: speech becomes a fixed sentence, silence nothing."""
    samples = np.frombuffer(pcm, dtype="<i2")
    if samples.size == 0 or int(np.abs(samples.astype(np.int32)).max()) < 1000:
        return None
    return f"spoken words of {samples.size * 1000 // 16000} ms"


def default_reply(text: str, history: list[dict[str, str]]) -> list[str]:
    return [f"[face:joy] You said: {text}.", f"That is turn {len(history) // 2 + 1}."]


@dataclass
class _Session:
    session_id: str
    user_id: str
    context_id: str | None = None
    text_invokes: int = 0
    scope: trio.CancelScope | None = None
    transaction_id: str | None = None
    done: trio.Event = field(default_factory=trio.Event)
    pcm: bytearray = field(default_factory=bytearray)
    in_speech: bool = False
    quiet: int = 0


class FakeAvatarServer:
    def __init__(
        self,
        *,
        api_key: str | None = "secret-key",
        reply: Callable[[str, list[dict[str, str]]], list[str]] = default_reply,
        stt: Callable[[bytes], str | None] = default_stt,
        quirks: frozenset[str] | set[str] = ALL_QUIRKS,
        pcm: bool = False,
        speech_seconds: float = 0.05,
        chunk_delay: float = 0.0,
        replay: bool = False,
    ) -> None:
        self.api_key = api_key
        self.reply = reply
        self.stt = stt
        self.quirks = set(quirks)
        self.pcm = pcm
        self.speech_seconds = speech_seconds
        self.chunk_delay = chunk_delay
        self.replay = replay
        self.sent: list[dict[str, Any]] = []  # every frame this fake sent, as sent
        self.fault: str | None = None
        self.port = 0
        self.frames: list[dict[str, Any]] = []  # every client frame that parsed
        self.requests: list[dict[str, Any]] = []  # invokes and streamed utterances: {"text"|"audio": ...}
        self.violations: list[str] = []
        self.connections = 0
        self.refused = 0
        self.histories: dict[str, list[dict[str, str]]] = {}
        self.replied = 0

    # --- serving --------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, self._handle, "127.0.0.1", 0, None)
            self.port = server.port
            task_status.started(self.port)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def _handle(self, request: WebSocketRequest) -> None:
        if request.path != "/ws":
            await request.reject(404)
            return
        if self.api_key is not None:
            headers = {k.decode().lower(): v.decode() for k, v in request.headers}
            if headers.get("authorization") != f"Bearer {self.api_key}":
                self.refused += 1
                await request.reject(403, body=b"policy violation: bad key")
                return
        ws = await request.accept()
        self.connections += 1
        sessions: dict[str, _Session] = {}
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    message = await ws.get_message()
                    if not await self._on_message(ws, message, sessions, nursery):
                        nursery.cancel_scope.cancel()
                        await ws.aclose()
                        return
        except* ConnectionClosed:
            pass  # the client went away; nothing to answer

    def _violation(self, text: str) -> None:
        self.violations.append(text)

    async def _send(self, ws: WebSocketConnection, session: _Session | None, kind: str, **fields: Any) -> None:
        assert kind in SERVER_TYPES or self.fault == "unknown_types", kind
        frame: dict[str, Any] = dict.fromkeys(RESPONSE_FIELDS)
        frame.update(
            {
                "type": kind,
                "session_id": session.session_id if session else None,
                "user_id": session.user_id if session else None,
                "context_id": session.context_id if session else None,
                "transaction_id": session.transaction_id if session else None,
                "metadata": {},
            }
        )
        frame.update(fields)
        await self._send_frame(ws, frame)

    async def _send_frame(self, ws: WebSocketConnection, frame: dict[str, Any]) -> None:
        self.sent.append(frame)
        await ws.send_message(json.dumps(frame))

    async def _on_message(
        self, ws: WebSocketConnection, message: str | bytes, sessions: dict[str, _Session], nursery: trio.Nursery
    ) -> bool:
        if isinstance(message, bytes):
            self._violation("binary frame from client")
            return True
        try:
            frame = json.loads(message)
        except json.JSONDecodeError:
            self._violation(f"malformed JSON from client: {message[:60]!r}")
            return True
        if not isinstance(frame, dict):
            self._violation("frame is not an object")
            return True
        kind = frame.get("type")
        if kind not in CLIENT_TYPES:
            self._violation(f"unknown client frame type {kind!r}")
            return True
        extra = set(frame) - _ALLOWED_KEYS[kind]
        if extra:
            self._violation(f"{kind}: unknown keys {sorted(extra)}")
        session_id = frame.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            self._violation(f"{kind} without session_id")
            await self._send(ws, None, "final", metadata={"error": "session_id is required"})
            return False
        self.frames.append(frame)
        if kind == "start":
            if not isinstance(frame.get("user_id"), str | None) or not isinstance(frame.get("metadata"), dict | None):
                self._violation("start: user_id/metadata of the wrong type")
            if not isinstance(frame.get("context_id"), str | None):
                self._violation("start: context_id of the wrong type")
            session = _Session(session_id, frame.get("user_id") or "user", frame.get("context_id"))
            sessions[session_id] = session
            await self._send(ws, session, "connected")
            return self.fault != "drop_on_start"  # a flapping server: accepts, then hangs up at once
        session = sessions.get(session_id)
        if session is None:
            self._violation(f"{kind} for a session that was never started")
            await self._send(ws, None, "error", metadata={"error": "unknown session"})
            return True
        if kind == "stop":
            if session.scope is not None:
                session.scope.cancel()
            del sessions[session_id]
            return True
        if kind == "config":
            if not isinstance(frame.get("metadata"), dict):
                self._violation("config: metadata is not an object")
            return True
        if kind == "data":
            pcm = self._pcm(frame.get("audio_data"), "data.audio_data")
            if pcm is not None:
                await self._listen(ws, session, pcm, nursery)
            return True
        # invoke
        text, audio = frame.get("text"), frame.get("audio_data")
        if text is not None and not isinstance(text, str):
            self._violation("invoke: text is not a string")
        if not text and audio is None:
            self._violation("invoke without text or audio_data")
            return True
        for key, typ in (("system_prompt_params", dict), ("files", list), ("metadata", dict)):
            if frame.get(key) is not None and not isinstance(frame[key], typ):
                self._violation(f"invoke: {key} is not a {typ.__name__}")
        context_id = frame.get("context_id")
        if context_id is not None and context_id not in self.histories:
            self._violation(f"invoke: context_id {context_id!r} was never given out")
        pcm = self._pcm(audio, "invoke.audio_data") if audio is not None and not text else None
        request = {"text": text} if text else {"audio": pcm}
        request["metadata"] = frame.get("metadata") or {}
        self.requests.append(request)
        if self.replay:
            await self._replay(ws, session, text=text or None, pcm=pcm, context_id=context_id)
            return True
        await self._begin(ws, session, nursery, text=text or None, pcm=pcm, context_id=context_id)
        return True

    async def _replay(
        self, ws: WebSocketConnection, session: _Session, *, text: str | None, pcm: bytes | None, context_id: str | None
    ) -> None:
        """Answer with the frames the real server sent for this kind of request, only the ids made live.

        Awaited by the reader, as the real server awaits its pipeline: nothing more is read meanwhile."""
        if text is not None:
            name = "pcm_text_invoke" if self.pcm else "text_invoke"
        else:
            assert pcm is not None
            name = "stt_failure" if self.stt(pcm) is None else "audio_invoke"
        later = session.transaction_id is not None  # the real server's next replies start differently
        if later and name in ("text_invoke", "audio_invoke"):
            name = f"next_{name}"
        frames = replayed_frames(name)
        previous, fresh = session.transaction_id, uuid.uuid4().hex
        session.context_id = context_id or session.context_id or uuid.uuid4().hex
        self.histories.setdefault(session.context_id, [])
        ids = replayed_ids(name)
        for frame in frames:
            live = dict(frame)
            for key, recorded_value, value in (
                ("session_id", ids["session_id"], session.session_id),
                ("user_id", ids["user_id"], session.user_id),
                ("context_id", ids["context_id"], session.context_id),
                ("transaction_id", ids["transaction_id"], fresh),
                ("transaction_id", ids["previous_transaction_id"], previous),
            ):
                if recorded_value is not None and live.get(key) == recorded_value:
                    live[key] = value
            if self.fault == "silent" and live["type"] not in ("stop", "accepted", "final"):
                await trio.sleep_forever()
            if (
                self.fault == "close_mid_reply"
                and live["type"] == "chunk"
                and any(
                    f["type"] == "chunk" and f.get("audio_data") and f.get("transaction_id") == fresh for f in self.sent
                )
            ):
                await ws.aclose(1011, "server going away")
                return
            if live["type"] == "accepted":
                session.transaction_id = fresh
            await trio.sleep(self.chunk_delay if live["type"] == "chunk" and live.get("audio_data") else 0)
            await self._send_frame(ws, live)
        self.replied += frames[-1]["type"] == "final"

    def _pcm(self, value: Any, what: str) -> bytes | None:
        if not isinstance(value, str):
            self._violation(f"{what} is not a string")
            return None
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            self._violation(f"{what} is not base64")
            return None
        if len(data) % 2:
            self._violation(f"{what} holds half a sample ({len(data)} bytes)")
        return data

    async def _listen(self, ws: WebSocketConnection, session: _Session, pcm: bytes, nursery: trio.Nursery) -> None:
        """The server's VAD over streamed data: loud 20 ms blocks start speech, 0.5 s of quiet ends it."""
        samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2")
        for start in range(0, samples.size, 320):
            block = samples[start : start + 320]
            loud = block.size and int(np.abs(block.astype(np.int32)).max()) >= 1000
            if loud and not session.in_speech:
                session.in_speech, session.quiet = True, 0
                await self._send(ws, session, "voiced")
            if session.in_speech:
                session.pcm.extend(block.astype("<i2").tobytes())
                session.quiet = 0 if loud else session.quiet + 1
                if session.quiet >= 25:
                    utterance = bytes(session.pcm)
                    session.pcm.clear()
                    session.in_speech = False
                    self.requests.append({"audio": utterance, "metadata": {}, "streamed": True})
                    await self._begin(ws, session, nursery, text=None, pcm=utterance, context_id=session.context_id)

    async def _begin(
        self,
        ws: WebSocketConnection,
        session: _Session,
        nursery: trio.Nursery,
        *,
        text: str | None,
        pcm: bytes | None,
        context_id: str | None,
    ) -> None:
        if session.scope is not None and not session.done.is_set():
            session.scope.cancel()
            await session.done.wait()
            await self._send(ws, session, "final", metadata={"interrupted": True})
            if "double_final" in self.quirks:
                await self._send(ws, session, "final", metadata={"interrupted": True})
        session.scope, session.done = trio.CancelScope(), trio.Event()
        session.transaction_id = uuid.uuid4().hex
        session.context_id = context_id or uuid.uuid4().hex
        self.histories.setdefault(session.context_id, [])
        nursery.start_soon(self._respond, ws, session, session.scope, session.done, text, pcm)

    async def _respond(
        self,
        ws: WebSocketConnection,
        session: _Session,
        scope: trio.CancelScope,
        done: trio.Event,
        text: str | None,
        pcm: bytes | None,
    ) -> None:
        try:
            with scope:
                await self._reply(ws, session, text, pcm)
        except ConnectionClosed:
            pass
        finally:
            done.set()

    async def _reply(self, ws: WebSocketConnection, session: _Session, text: str | None, pcm: bytes | None) -> None:
        typed = text is not None
        stop = {"user_id": None, "transaction_id": None, "metadata": None}
        if text is not None and "stop_first" in self.quirks:  # recorded order for text: stop, then accepted
            await self._send(ws, session, "stop", **stop)
        if "no_accepted" not in self.quirks:
            await self._send(ws, session, "accepted", user_id=None, context_id=None, metadata={"block_barge_in": False})
        if self.fault == "silent":
            await trio.sleep_forever()
        if self.fault == "error":
            await self._send(ws, session, "error", metadata={"error": "LLM backend unavailable"})
            return
        if self.fault == "unknown_types":
            await self._send(ws, session, "thinking_hard", metadata={"note": "a type from a newer server"})
        if self.fault == "binary":
            await ws.send_message(b"\x00\x01binary")
        if text is None:
            assert pcm is not None
            text = self.stt(pcm)
            if text is None:
                if "canceled_stt" in self.quirks:
                    await self._send(ws, session, "canceled", metadata={"reason": "No speech recognized."})
                else:
                    await self._send(ws, session, "final", metadata={"error": "speech recognition failed"})
                return
            if "stop_first" in self.quirks:  # for audio: after its speech recognition, before `start`
                await self._send(ws, session, "stop", **stop)
        else:
            session.text_invokes += 1
        if not (typed and "no_first_start" in self.quirks):
            await self._send(ws, session, "start", metadata={"request_text": text, "recognized_text": text})
        history = self.histories[session.context_id or ""]
        sentences = self.reply(text, history)
        if "empty_chunks" in self.quirks:
            await self._send(
                ws,
                session,
                "chunk",
                text="",
                voice_text="",
                audio_data="",
                avatar_control_request=dict.fromkeys(_CONTROL_FIELDS),
            )
            await self._send(ws, session, "chunk")
        spoken = []
        for index, sentence in enumerate(sentences):
            if index and self.fault == "close_mid_reply":
                await ws.aclose(1011, "server going away")
                return
            if self.fault == "malformed":
                await ws.send_message('{"type": "chunk", "text": "broken')
                return
            await trio.sleep(self.chunk_delay)
            last = index == len(sentences) - 1
            await self._chunk(ws, session, sentence if last else sentence + " ")  # the real text keeps its space
            spoken.append(sentence)
            if self.fault == "stop":  # its guardrail (or its own VAD) says: stop playing now
                await self._send(ws, session, "stop")
                return
            if self.fault == "foreign_stop":  # a stop naming another transaction: not this reply's
                await self._send(ws, session, "stop", transaction_id=uuid.uuid4().hex)
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": " ".join(spoken)}]
        self.replied += 1
        voices = "".join(parse_tags(sentence)[0] for sentence in spoken)  # the real one joins them without a gap
        await self._send(ws, session, "final", text=" ".join(spoken), voice_text=voices, metadata={})

    async def _chunk(self, ws: WebSocketConnection, session: _Session, sentence: str) -> None:
        voice, tags = parse_tags(sentence)
        faces = [value for name, value in tags if name == "face"]
        animations = [value for name, value in tags if name == "animation"]
        control = {
            "animation_name": animations[0] if animations else None,
            "animation_duration": 3.0 if animations else None,
            "face_name": faces[0] if faces else None,
            "face_duration": 4.0 if faces else None,
        }
        clip = tone(self.speech_seconds)
        common = {
            "text": sentence,
            "voice_text": voice,
            "avatar_control_request": control,
            "control_tags": [{"name": name, "attributes": {"name": value}} for name, value in tags] or None,
        }
        if not self.pcm:
            await self._send(ws, session, "chunk", audio_data=base64.b64encode(encode_wav(clip)).decode(), **common)
            return
        audio_id = uuid.uuid4().hex
        raw = clip.pcm()
        fmt = {"sample_rate": clip.sample_rate, "channels": 1, "sample_width": 2}
        await self._send(
            ws,
            session,
            "chunk",
            **common,
            metadata={"pcm_format": fmt, "audio_id": audio_id, "audio_frame_count": len(clip.samples)},
        )
        step = 4800
        for start in range(0, len(raw), step):  # the real server repeats the format in every audio frame
            await self._send(
                ws,
                session,
                "chunk",
                audio_data=base64.b64encode(raw[start : start + step]).decode(),
                metadata={"pcm_format": fmt, "audio_id": audio_id},
            )
