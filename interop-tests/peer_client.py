"""AIAvatarKit 0.9.2's own WebSocket client, without audio devices, against a server: run by the peer venv.

    .cache/aiavatar-venv/bin/python interop-tests/peer_client.py --url ws://... --api-key K --script JSON

Its real ``AIAvatarWebSocketClient`` does the work: ``send_request``, ``receive_websocket_worker`` (which
parses every frame with ``AIAvatarResponse.model_validate_json`` and dies on an ``error``),
``receive_response_worker`` and ``perform_response`` (faces to its face controller, audio to its
``AudioPlayer``). Only PortAudio is replaced, by a stand-in ``pyaudio`` module that counts the bytes the
player writes. The script is a list of requests: ``{"text": "..."}`` or ``{"audio_seconds": 1.0}`` (a tone),
each awaited to its ``final``/``canceled``/``error``; ``"hang_up": "close"|"drop"`` leaves after its first
sentence. Prints one JSON line: what the client saw.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import struct
import sys
import time
import types
from typing import Any

PLAYED: dict[str, Any] = {"bytes": 0, "streams": [], "writes": []}


class _Stream:
    def __init__(self, **kwargs: Any) -> None:
        PLAYED["streams"].append({k: kwargs[k] for k in ("rate", "channels", "format")})

    def write(self, data: bytes) -> None:
        PLAYED["bytes"] += len(data)
        PLAYED["writes"].append([time.monotonic(), len(data)])  # CLOCK_MONOTONIC: comparable across processes

    def stop_stream(self) -> None:
        pass

    def close(self) -> None:
        pass


class _PyAudio:
    def open(self, **kwargs: Any) -> _Stream:
        return _Stream(**kwargs)

    def get_format_from_width(self, width: int) -> int:
        return width

    def terminate(self) -> None:
        pass


def _install_fake_portaudio() -> None:
    module = types.ModuleType("pyaudio")
    module.PyAudio = _PyAudio  # type: ignore[attr-defined]
    module.paInt16 = 8  # type: ignore[attr-defined]
    sys.modules["pyaudio"] = module


class _Devices:
    input_device, output_device = 0, 0
    input_device_info = {"index": 0, "name": "none (interop test)"}
    output_device_info = {"index": 0, "name": "none (interop test)"}


def tone(seconds: float) -> bytes:
    n = int(seconds * 16_000)
    return b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * 220 * i / 16_000))) for i in range(n))


async def run(url: str, api_key: str, script: list[dict[str, Any]], context: str | None = None) -> dict[str, Any]:
    _install_fake_portaudio()
    import websockets
    from aiavatar.adapter.models import AIAvatarRequest, AIAvatarResponse
    from aiavatar.adapter.websocket.client import AIAvatarWebSocketClient
    from aiavatar.animation import AnimationControllerBase
    from aiavatar.face import FaceControllerBase

    faces: list[str] = []
    animations: list[str] = []

    class Face(FaceControllerBase):
        async def set_face(self, name: str, duration: float) -> None:
            self.faces.setdefault(name, name)
            faces.append(name)
            await super().set_face(name, duration)

    class Animation(AnimationControllerBase):
        async def animate(self, name: str, duration: float) -> None:
            animations.append(name)

    client = AIAvatarWebSocketClient(
        url=url, api_key=api_key, audio_devices=_Devices(), face_controller=Face(), animation_controller=Animation()
    )
    seen: list[dict[str, Any]] = []
    parse_errors: list[str] = []
    ended: asyncio.Queue[AIAvatarResponse] = asyncio.Queue()

    for kind in ("connected", "accepted", "start", "chunk", "final", "canceled", "stop", "voiced", "vision"):

        async def note(response: AIAvatarResponse, kind: str = kind) -> None:
            seen.append(
                {
                    "type": kind,
                    "transaction_id": response.transaction_id,
                    "voice_text": response.voice_text,
                    "metadata": response.metadata,
                }
            )
            if kind in ("final", "canceled") and not (response.metadata or {}).get("interrupted"):
                await ended.put(response)

        client.on_response(kind)(note)

    session = "interop-session"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {api_key}"}) as ws:
        raw_recv = ws.recv

        async def recv() -> str:  # the same frames its worker parses, also checked here to count every error
            message = await raw_recv()
            try:
                AIAvatarResponse.model_validate_json(message)
            except Exception as exc:
                parse_errors.append(f"{exc}: {str(message)[:200]}")
            return message

        ws.recv = recv  # type: ignore[method-assign]
        client.websocket_connection = ws
        receive_ws = asyncio.create_task(client.receive_websocket_worker())
        receive_responses = asyncio.create_task(client.receive_response_worker())
        await client.initialize_session(session, "interop-user", context)  # type: ignore[arg-type]
        results: list[dict[str, Any]] = []
        for step in script:
            if "text" in step:
                request = AIAvatarRequest(type="invoke", session_id=session, user_id="interop-user", text=step["text"])
            else:
                audio = base64.b64encode(tone(step["audio_seconds"])).decode()
                request = AIAvatarRequest(type="invoke", session_id=session, user_id="interop-user", audio_data=audio)
            await client.send_request(request)
            if step.get("hang_up"):  # leave in the middle of the reply: "close" politely, "drop" the TCP link
                while not any(s["type"] == "chunk" and s["voice_text"] for s in seen):
                    await asyncio.sleep(0.01)
                receive_ws.cancel()
                receive_responses.cancel()
                if step["hang_up"] == "drop":
                    ws.transport.abort()
                else:
                    await ws.close()
                results.append({"type": "hung-up"})
                return {"results": results, "seen": seen, "parse_errors": parse_errors}
            waiter = asyncio.create_task(ended.get())
            done, _ = await asyncio.wait({waiter, receive_ws}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                end = waiter.result()
                results.append({"type": end.type, "voice_text": end.voice_text, "text": end.text})
            else:
                waiter.cancel()
                failure = receive_ws.exception() if receive_ws.done() else None
                results.append({"type": "client-died" if failure else "timeout", "error": repr(failure)})
                break
        await asyncio.sleep(0.3)  # let the player thread take the last sentence
        await client.stop_listening(session)  # its own goodbye: cancels the reader, sends `stop`
        receive_responses.cancel()
    return {
        "results": results,
        "seen": seen,
        "parse_errors": parse_errors,
        "faces": faces,
        "animations": animations,
        "played_bytes": PLAYED["bytes"],
        "streams": PLAYED["streams"],
        "writes": PLAYED["writes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--script", required=True)
    parser.add_argument("--context", default=None, help="the context_id its start frame names (default none)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.api_key, json.loads(args.script), args.context))), flush=True)


if __name__ == "__main__":
    main()
