"""The real AIAvatarKit server (``aiavatar`` 0.9.2), wired to our fake cloud: run by the peer venv's python.

    .cache/aiavatar-venv/bin/python interop-tests/peer_server.py --cloud http://127.0.0.1:PORT [--pcm BYTES]

Its STT, LLM and TTS are AIAvatarKit's own OpenAI clients pointed at the fake cloud's OpenAI-compatible
``/v1``; its VAD is its own amplitude detector (Silero would fetch a model from a hub). It binds 127.0.0.1 on
a free port and prints ``PORT <n>`` once uvicorn listens, so the test never races the bind. Nothing here is
copied from AIAvatarKit: this only builds its objects the way its README shows.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cloud", required=True, help="the fake cloud's base URL (http://127.0.0.1:PORT)")
    parser.add_argument("--api-key", default="secret-key")
    parser.add_argument("--pcm", type=int, default=0, help="response_audio_chunk_size: 0 = one WAV per chunk")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    os.chdir(tempfile.mkdtemp(prefix="aiavatar-peer-"))  # its SQLite files land here, not in the repo
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="peer %(levelname)s %(name)s: %(message)s")

    import uvicorn
    from aiavatar.adapter.websocket.server import AIAvatarWebSocketServer
    from aiavatar.sts.llm.chatgpt import ChatGPTService
    from aiavatar.sts.stt.openai import OpenAISpeechRecognizer
    from aiavatar.sts.tts.openai import OpenAISpeechSynthesizer
    from aiavatar.sts.vad.standard import StandardSpeechDetector
    from fastapi import FastAPI

    base = args.cloud.rstrip("/") + "/v1"
    server = AIAvatarWebSocketServer(
        vad=StandardSpeechDetector(volume_db_threshold=-40.0, silence_duration_threshold=0.5),
        stt=OpenAISpeechRecognizer(openai_api_key="fake-key", base_url=base, language="en", model="fake-stt"),
        llm=ChatGPTService(
            openai_api_key="fake-key", base_url=base, model="fake-model", system_prompt="You are a test robot."
        ),
        tts=OpenAISpeechSynthesizer(openai_api_key="fake-key", base_url=base, model="fake-tts", audio_format="wav"),
        api_key=args.api_key,
        response_audio_chunk_size=args.pcm,
        voice_recorder_enabled=False,
    )
    app = FastAPI()
    app.include_router(server.get_websocket_router())

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))

    async def serve() -> None:
        async def announce() -> None:
            while not uv.started:
                await asyncio.sleep(0.01)
            print(f"PORT {sock.getsockname()[1]}", flush=True)

        task = asyncio.create_task(announce())
        await uv.serve(sockets=[sock])
        task.cancel()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
