"""Record what the real AIAvatarKit server sends, into ``tests/fixtures/aiavatar/*.json``.

    make interop-record        (or: .venv/bin/python interop-tests/record.py)

Each fixture holds the client frames of one scenario (audio replaced by its length) and every frame the real
server answered, verbatim (its ids included). ``tests/fakes/aiavatar.py`` replays these, so the fast suite
sees the real sequences (the ``stop`` before ``start``, the chunk text ending in a space, nulls) without the
peer installed. Re-record after changing the pinned AIAvatarKit version, and read the diff.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import trio
from trio_websocket import open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peer import API_KEY, peer_server

from tests.fakes.cloud import FakeCloud

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "aiavatar"
VERSION = "0.9.2"
REPLY = "[face:joy] Nice to meet you. I am a test robot! [animation:wave] Have a nice day."


def speech_pcm(seconds: float = 1.0) -> bytes:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (np.sin(2 * math.pi * 220 * t) * 12000).astype("<i2").tobytes()


class Recorder:
    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []

    async def send(self, ws: Any, frame: dict[str, Any]) -> None:
        shown = dict(frame)
        if isinstance(shown.get("audio_data"), str):
            shown["audio_data"] = f"<{len(base64.b64decode(shown['audio_data']))} bytes of PCM>"
        self.sent.append(shown)
        await ws.send_message(json.dumps(frame))

    async def until(self, ws: Any, done: Any, grace: float = 0.5) -> None:
        """Receive until ``done(frame)``, then for ``grace`` seconds more (late frames are part of the truth)."""
        with trio.fail_after(15):
            while True:
                frame = json.loads(await ws.get_message())
                self.received.append(frame)
                if done(frame):
                    break
        with trio.move_on_after(grace):
            while True:
                self.received.append(json.loads(await ws.get_message()))


async def scenario(url: str, name: str, steps: Any) -> dict[str, Any]:
    rec = Recorder(url)
    session = f"rec-{uuid.uuid4().hex[:8]}"
    headers = [(b"Authorization", f"Bearer {API_KEY}".encode())]
    async with open_websocket_url(url, extra_headers=headers, max_message_size=16 * 1024 * 1024) as ws:
        await rec.send(
            ws, {"type": "start", "session_id": session, "user_id": "recorder", "context_id": None, "metadata": {}}
        )
        await rec.until(ws, lambda f: f["type"] == "connected", grace=0.1)
        await steps(rec, ws, session)
        await rec.send(ws, {"type": "stop", "session_id": session})
    return {"scenario": name, "aiavatar": VERSION, "sent": rec.sent, "received": rec.received}


def invoke(session: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "invoke",
        "session_id": session,
        "user_id": "recorder",
        "context_id": None,
        "system_prompt_params": {},
        "files": [],
        "metadata": {},
        **fields,
    }


def final_or_canceled(frame: dict[str, Any]) -> bool:
    return frame["type"] in ("final", "canceled", "error")


def reply_done(rec: Recorder) -> Any:
    """The end of the reply to the last request: a final (not one marked interrupted) of the last accepted."""

    def done(frame: dict[str, Any]) -> bool:
        accepted = [f["transaction_id"] for f in rec.received if f["type"] == "accepted"]
        return (
            final_or_canceled(frame)
            and not (frame.get("metadata") or {}).get("interrupted")
            and bool(accepted)
            and frame["transaction_id"] == accepted[-1]
        )

    return done


async def text_invoke(rec: Recorder, ws: Any, session: str) -> None:
    await rec.send(ws, invoke(session, text="Hello robot"))
    await rec.until(ws, reply_done(rec))


async def audio_invoke(rec: Recorder, ws: Any, session: str) -> None:
    await rec.send(ws, invoke(session, audio_data=base64.b64encode(speech_pcm()).decode()))
    await rec.until(ws, reply_done(rec))


async def text_then_audio(rec: Recorder, ws: Any, session: str) -> None:
    await text_invoke(rec, ws, session)
    await audio_invoke(rec, ws, session)


async def barge_in(rec: Recorder, ws: Any, session: str) -> None:
    await rec.send(ws, invoke(session, text="Tell me a long story"))
    await rec.until(ws, lambda f: f["type"] == "chunk", grace=0)
    await rec.send(ws, invoke(session, text="Stop, a new question"))

    def second_reply_done(frame: dict[str, Any]) -> bool:
        accepted = [f["transaction_id"] for f in rec.received if f["type"] == "accepted"]
        return len(accepted) >= 2 and final_or_canceled(frame) and frame["transaction_id"] == accepted[-1]

    await rec.until(ws, second_reply_done)


async def record_all(cloud: FakeCloud) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    async with peer_server(cloud.url) as peer:
        out["text_invoke"] = await scenario(peer.url, "text_invoke", text_invoke)
        out["audio_invoke"] = await scenario(peer.url, "audio_invoke", audio_invoke)
        out["text_then_audio"] = await scenario(peer.url, "text_then_audio", text_then_audio)
        cloud.transcript = ""  # the STT hears nothing
        out["stt_failure"] = await scenario(peer.url, "stt_failure", audio_invoke)
        cloud.transcript = "What time is it?"
        cloud.llm.token_delay = 0.05  # a reply slow enough to be interrupted
        out["barge_in"] = await scenario(peer.url, "barge_in", barge_in)
        cloud.llm.token_delay = 0.0
    async with peer_server(cloud.url, pcm=9600) as peer:
        out["pcm_text_invoke"] = await scenario(peer.url, "pcm_text_invoke", text_invoke)
    return out


async def main() -> None:
    cloud = FakeCloud(reply=REPLY, seconds_per_char=0.004)
    async with trio.open_nursery() as nursery:
        await nursery.start(cloud.serve)
        recorded = await record_all(cloud)
        nursery.cancel_scope.cancel()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, data in recorded.items():
        path = FIXTURES / f"{name}.json"
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        kinds = " ".join(f["type"] for f in data["received"])
        print(f"{path.relative_to(FIXTURES.parent.parent.parent)}: {kinds}")


if __name__ == "__main__":
    trio.run(main)
