"""Time to first audio for every LLM × TTS pair against the fake providers with fixed latencies.

The fakes run in their own process (so their work does not count as ours) and answer after fixed delays.
For each pair we measure (a) a whole turn through the appliance, from the text request to the first audio
handed to the speaker, and (b) the same two requests made bare with httpx (stream the model until its first
sentence is complete, then synthesize that sentence): the transport and the fake's own time. The firmware's
share is the median over turns of (a) − (b), each turn paired with the bare requests made right after it:
SDKs, sentence splitting, the brain, the turn loop and the sink.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.common import Figure, median

LLM_LATENCY = 0.150
TTS_LATENCY = 0.080
TOKEN_DELAY = 0.010
RUNS = int(os.environ.get("BENCH_PROVIDERS_RUNS", "9"))
KEY = "test-key"
FIRST_SENTENCE = "It is nine o'clock."
LLMS = os.environ.get("BENCH_PROVIDERS_LLMS", "openai,anthropic,gemini,dify").split(",")
TTSS = os.environ.get("BENCH_PROVIDERS_TTS", "openai,voicevox,azure,google,http").split(",")
ROOT = Path(__file__).resolve().parent.parent


def _config(url: str, llm: str, tts: str) -> Any:
    from appliance.config import AppConfig

    llm_cfg: dict[str, Any] = {"provider": llm, "api_key": KEY, "model": "fake-model"}
    llm_cfg["base_url"] = {"openai": f"{url}/v1", "dify": f"{url}/v1"}.get(llm, url)
    tts_cfg: dict[str, Any] = {"provider": tts, "api_key": KEY}
    if tts == "openai":
        tts_cfg["base_url"] = f"{url}/v1"
    elif tts == "http":
        tts_cfg.update(url=f"{url}/tts", body='{"text": "{text}"}')
    else:
        tts_cfg["base_url"] = url
        if tts == "azure":
            tts_cfg["region"] = "x"
    return AppConfig.model_validate(
        {
            "stt": {"base_url": f"{url}/v1", "api_key": KEY},
            "llm": llm_cfg,
            "tts": tts_cfg,
            "conversation": {"brain": "cloud"},
            "audio": {"input": "simulated", "output": "simulated", "simulated_speech_after": None},
            "gpio": {"pin_factory": "mock"},
            "log": {"status_line": "off", "level": "WARNING"},
        }
    )


async def _pair(url: str, client: httpx.AsyncClient, llm: str, tts: str) -> tuple[list[float], list[float]]:
    """Turns through the appliance interleaved with bare requests, so load on the machine hits both alike."""
    from appliance.events import TurnFinished
    from appliance.turns import Utterance
    from tests.harness import running_appliance

    turns, bare = [], []
    async with running_appliance(_config(url, llm, tts)) as (app, log):
        await app.brain.ensure()  # SDK imports happen at start-up, not in the measured turn
        for i in range(RUNS + 1):
            await app.conversation.start_turn(Utterance(text="What time is it?"))
            await log.wait_for(TurnFinished, lambda e, n=i: len(log.of(TurnFinished)) > n)
            done = log.of(TurnFinished)[i]
            if done.outcome != "done" or done.timings.first_audio is None:
                raise RuntimeError(f"{llm}+{tts}: turn {done.outcome}: {done.error}")
            plain = await _bare(client, url, llm, tts)
            if i:  # the first round opens connections
                turns.append(done.timings.first_audio)
                bare.append(plain)
    return turns, bare


def _llm_request(url: str, llm: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    messages = [{"role": "user", "content": "What time is it?"}]
    if llm == "openai":
        return (
            f"{url}/v1/chat/completions",
            {"model": "m", "messages": messages, "stream": True},
            {"authorization": f"Bearer {KEY}"},
        )
    if llm == "anthropic":
        return (
            f"{url}/v1/messages",
            {"model": "m", "max_tokens": 100, "messages": messages, "stream": True},
            {"x-api-key": KEY},
        )
    if llm == "gemini":
        return (
            f"{url}/v1beta/models/m:streamGenerateContent?alt=sse",
            {"contents": [{"role": "user", "parts": [{"text": "What time is it?"}]}]},
            {"x-goog-api-key": KEY},
        )
    return (
        f"{url}/v1/chat-messages",
        {"query": "What time is it?", "inputs": {}, "user": "u", "response_mode": "streaming"},
        {"authorization": f"Bearer {KEY}"},
    )


def _tts_request(url: str, tts: str, text: str) -> dict[str, Any]:
    if tts == "openai":
        return {
            "method": "POST",
            "url": f"{url}/v1/audio/speech",
            "json": {"model": "m", "voice": "alloy", "input": text, "response_format": "pcm"},
        }
    if tts == "azure":
        return {
            "method": "POST",
            "url": f"{url}/cognitiveservices/v1",
            "headers": {"ocp-apim-subscription-key": KEY},
            "content": f"<speak version='1.0'><voice name='v'>{text}</voice></speak>".encode(),
        }
    if tts == "google":
        return {
            "method": "POST",
            "url": f"{url}/v1/text:synthesize",
            "headers": {"x-goog-api-key": KEY},
            "json": {
                "input": {"text": text},
                "voice": {"languageCode": "en-US"},
                "audioConfig": {"audioEncoding": "LINEAR16"},
            },
        }
    return {"method": "POST", "url": f"{url}/tts", "json": {"text": text}}


async def _bare(client: httpx.AsyncClient, url: str, llm: str, tts: str) -> float:
    """The least any client could do: stream the model until its first sentence is complete, then request
    that sentence's speech and stop at its first bytes (Google's JSON answer only counts when whole)."""
    start = trio.current_time()
    target, body, headers = _llm_request(url, llm)
    seen = b""
    async with client.stream("POST", target, json=body, headers=headers) as response:
        async for chunk in response.aiter_bytes():
            seen += chunk
            if b"clock." in seen:
                break
    if tts == "voicevox":
        query = (await client.post(f"{url}/audio_query", params={"text": FIRST_SENTENCE, "speaker": 1})).json()
        request: dict[str, Any] = {"method": "POST", "url": f"{url}/synthesis", "params": {"speaker": 1}, "json": query}
    else:
        request = _tts_request(url, tts, FIRST_SENTENCE)
    async with client.stream(**request) as audio:
        audio.raise_for_status()
        if tts == "google":
            await audio.aread()
        else:
            async for chunk in audio.aiter_bytes():
                if chunk:
                    break
    return trio.current_time() - start


async def _measure(url: str) -> list[Figure]:
    figures = []
    async with httpx.AsyncClient(timeout=10) as client:
        for llm in LLMS:
            for tts in TTSS:
                turns, bare = await _pair(url, client, llm, tts)
                # Each turn paired with the bare requests made right after it; the verdict is the median of
                # those differences (a best-of-N on each side picks the two luckiest runs, never the same pair).
                paired = median([t - b for t, b in zip(turns, bare, strict=True)]) * 1000
                figures.append(
                    Figure(
                        f"time to first audio {llm}+{tts}",
                        median(turns) * 1000,
                        "ms",
                        note=f"fixed latencies {LLM_LATENCY * 1000:g}+{TTS_LATENCY * 1000:g} ms",
                    )
                )
                figures.append(
                    Figure(
                        f"firmware share {llm}+{tts}, median of paired differences",
                        paired,
                        "ms",
                        "<= 15",
                        note=f"best-of: {(min(turns) - min(bare)) * 1000:.1f} ms; bare median {median(bare) * 1000:.0f} ms;"
                        f" machine shared (load {os.getloadavg()[0]:.1f})",
                    )
                )
    return figures


def main() -> list[Figure]:
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.providers",
            "--llm-latency",
            str(LLM_LATENCY),
            "--tts-latency",
            str(TTS_LATENCY),
            "--token-delay",
            str(TOKEN_DELAY),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stdout is not None
        url = fake.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1"):
            raise RuntimeError(f"fake providers did not start: {url!r}")
        import logging

        logging.getLogger().setLevel(logging.WARNING)
        return trio.run(_measure, url)
    finally:
        fake.terminate()
        fake.wait(timeout=10)


if __name__ == "__main__":
    from bench.common import print_figures

    print_figures(main())
