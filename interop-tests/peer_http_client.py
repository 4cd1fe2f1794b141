"""AIAvatarKit 0.9.2's own HTTP client, without audio devices, against a server: run by the peer venv.

    .cache/aiavatar-venv/bin/python interop-tests/peer_http_client.py --url http://.../chat --api-key K --script JSON

Its real ``AIAvatarHttpClient.send_request`` posts each request and parses every SSE line with
``AIAvatarResponse.model_validate_json`` (raising on an ``error`` frame); its ``receive_response_worker`` and
``perform_response`` then show faces and play the WAV audio (PortAudio replaced by the stand-in of
peer_client.py). The script: ``{"text": "..."}`` or ``{"audio_seconds": 1.0}`` (a tone, sent as the raw PCM
its VAD hands over), ``"api_key": "..."`` to send another key, ``"look": "data:image/..."`` for the picture its
``get_image_url`` hook gives when a ``vision`` frame asks for one (the worker then sends it, as in a real app,
and the step waits for that reply's final). Prints one JSON line: what the client saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from peer_client import PLAYED, _Devices, _install_fake_portaudio, tone


async def run(url: str, api_key: str, script: list[dict[str, Any]]) -> dict[str, Any]:
    _install_fake_portaudio()
    from aiavatar.adapter.http.client import AIAvatarHttpClient
    from aiavatar.adapter.models import AIAvatarRequest, AIAvatarResponse
    from aiavatar.animation import AnimationControllerBase
    from aiavatar.face import FaceControllerBase
    from aiavatar.sts.vad import SpeechDetectorDummy

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

    def client_for(key: str) -> Any:
        return AIAvatarHttpClient(
            url=url,
            api_key=key,
            vad=SpeechDetectorDummy(),
            audio_devices=_Devices(),
            face_controller=Face(),
            animation_controller=Animation(),
        )

    client = client_for(api_key)
    seen: list[dict[str, Any]] = []
    looks: list[str] = []
    picture: list[str] = []
    for kind in ("connected", "start", "chunk", "tool_call", "final", "vision", "canceled", "error"):

        async def note(response: AIAvatarResponse, kind: str = kind) -> None:
            seen.append({"type": kind, "voice_text": response.voice_text, "metadata": response.metadata})

        client.on_response(kind)(note)

    @client.get_image_url
    async def camera(source: str) -> str | None:
        looks.append(source)
        return picture[0] if picture else None

    worker = asyncio.create_task(client.receive_response_worker())
    results: list[dict[str, Any]] = []
    session = "interop-http"
    for step in script:
        sender = client_for(step["api_key"]) if "api_key" in step else client
        picture[:] = [step["look"]] if "look" in step else []
        if "text" in step:
            request = AIAvatarRequest(type="start", session_id=session, user_id="u", text=step["text"])
        else:
            request = AIAvatarRequest(
                type="start", session_id=session, user_id="u", audio_data=tone(step["audio_seconds"])
            )
        try:
            await sender.send_request(request)
            results.append({"outcome": "ok"})
        except Exception as exc:  # what its caller would see
            results.append({"outcome": type(exc).__name__, "message": str(exc)[:300]})
        while not client.response_queue.empty():
            await asyncio.sleep(0.02)
        if "look" in step:  # its worker answers the vision frame with a new request: wait for that reply
            for _ in range(1000):
                if [s["type"] for s in seen][-1:] == ["final"] and any(s["type"] == "vision" for s in seen):
                    break
                await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # the player thread takes the last sentence
    worker.cancel()
    return {
        "results": results,
        "seen": seen,
        "faces": faces,
        "animations": animations,
        "played_bytes": PLAYED["bytes"],
        "looks": looks,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--script", required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.api_key, json.loads(args.script)))), flush=True)


if __name__ == "__main__":
    main()
