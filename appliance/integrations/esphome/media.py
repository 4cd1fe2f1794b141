"""Fetch speech from a URL Home Assistant sends (a TTS result, an announcement) and play it as it arrives."""

from __future__ import annotations

import logging

import httpx
import numpy as np
import trio

from appliance.audio.base import AudioClip, AudioStream
from appliance.errors import ProviderBadReply, ProviderError, ProviderTimeout, ProviderUnavailable
from appliance.providers.tts._audio import WavStreamDecoder

log = logging.getLogger(__name__)

NAME = "home_assistant"
MAX_AUDIO_BYTES = 50_000_000  # ~26 min of 16 kHz speech: anything longer is not a reply


async def stream_url(url: str, timeout: float, *, task_status: trio.TaskStatus[AudioStream]) -> None:
    """Download ``url`` (a WAV); reports an :class:`AudioStream` as soon as the header has passed, then feeds it.

    Errors before the first audio are raised (``nursery.start`` sees them); later ones reach the player
    through the stream, after the audio that did arrive.
    """
    send: trio.MemorySendChannel[np.ndarray | BaseException] | None = None
    decoder = WavStreamDecoder(NAME, "wav")

    def hand_over(clips: list[AudioClip]) -> None:
        nonlocal send
        for clip in clips:
            if send is None:
                send, stream = AudioStream.open(clip.sample_rate)
                task_status.started(stream)
            send.send_nowait(clip.samples)

    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            async with client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise ProviderBadReply(NAME, f"audio URL answered HTTP {response.status_code}")
                received = 0
                async for data in response.aiter_bytes():
                    received += len(data)
                    if received > MAX_AUDIO_BYTES:
                        raise ProviderBadReply(NAME, "audio too long")
                    hand_over(decoder.feed(data))
        hand_over(decoder.finish())
        if send is None:
            raise ProviderBadReply(NAME, "the audio URL held no audio")
    except httpx.TimeoutException:
        error: ProviderError = ProviderTimeout(NAME, f"audio URL not answered in {timeout:g} s")
        if send is None:
            raise error from None
        send.send_nowait(error)
    except httpx.HTTPError as exc:
        error = ProviderUnavailable(NAME, f"audio URL failed: {type(exc).__name__}")
        if send is None:
            raise error from None
        send.send_nowait(error)
    except ProviderError as exc:
        if send is None:
            raise
        send.send_nowait(exc)
    finally:
        if send is not None:
            send.close()


def chime(seconds: float = 1.0, rate: int = 16_000) -> AudioClip:
    """A two-tone alarm beep followed by silence: what a finished timer rings with."""
    t = np.arange(int(0.18 * rate)) / rate
    tone = np.concatenate([np.sin(2 * np.pi * 880 * t), np.zeros(int(0.06 * rate)), np.sin(2 * np.pi * 1320 * t)])
    tone *= np.minimum(1.0, np.minimum(np.arange(len(tone)), np.arange(len(tone))[::-1]) / 160)  # no clicks
    pad = max(0, int(seconds * rate) - len(tone))
    samples = np.concatenate([tone * 0.4 * 32767, np.zeros(pad)]).astype(np.int16)
    return AudioClip(samples, rate)
