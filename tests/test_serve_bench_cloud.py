"""``bench serve``'s lean fake cloud answers our providers exactly as the tests' fake cloud does (it only replaces
Starlette and hypercorn, which cost the bench more CPU a turn than the server it measures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import trio

from appliance.audio.base import AudioClip
from appliance.providers.llm.openai import OpenAIChat
from appliance.providers.stt.openai import OpenAIRecognizer
from appliance.providers.tts.openai import OpenAISynthesizer
from appliance.turns import Message
from tests.fakes.cloud import fake_cloud

REPO = Path(__file__).resolve().parent.parent


async def _answers(url: str) -> tuple[str, list[str], list[np.ndarray], bool]:
    base = f"{url}/v1"
    stt = OpenAIRecognizer("whisper-1", "key", base, timeout=5)
    llm = OpenAIChat("fake", "key", base, timeout=5)
    tts = OpenAISynthesizer("tts-1", "alloy", "key", base, timeout=5)
    try:
        heard = await stt.transcribe(AudioClip(np.zeros(16_000, dtype=np.int16), 16_000))
        words = [str(piece) async for piece in llm.stream("system", (Message("user", heard),))]
        speech = [clip.samples async for clip in tts.synthesize_stream("It is nine o'clock.")]
        await llm.warm()  # a request to /models: the connection stays usable
        again = await stt.transcribe(AudioClip(np.zeros(1600, dtype=np.int16), 16_000))
    finally:
        for part in (stt, llm, tts):
            await part.aclose()
    return heard, words, speech, again == heard


async def test_the_lean_cloud_answers_like_the_tests_fake() -> None:
    async with fake_cloud() as cloud:
        expected = await _answers(cloud.url)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bench.lean_cloud", "--llm-latency", "0.01"], cwd=REPO, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(20):
            url = (await process.stdout.receive_some(200)).decode().strip()
            got = await _answers(url)
    finally:
        process.kill()
        await process.wait()
    assert got[0] == expected[0] == "What time is it?"
    assert got[1] == expected[1]  # the same reply in the same pieces
    assert np.array_equal(np.concatenate(got[2]), np.concatenate(expected[2]))  # the same speech (pieces as read)
    assert got[3] and expected[3]
