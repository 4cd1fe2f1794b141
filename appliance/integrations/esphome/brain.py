"""``HomeAssistantBrain``: the utterance goes to Home Assistant's Assist pipeline over the ESPHome API.

Home Assistant runs speech-to-text, its conversation agent (so "turn on the kitchen light" works) and
text-to-speech; we get a transcript, the reply text and a URL of the reply's speech, which is fetched and
played as it downloads. It is one more brain: failover moves on when Home Assistant is not connected, sends
an error, or is silent for ``home_assistant.reply_timeout``.
"""

from __future__ import annotations

import logging

import trio

from appliance.errors import ProviderBadReply, ProviderRejected, ProviderTimeout, ProviderUnavailable
from appliance.groups import single_error
from appliance.integrations.esphome.media import stream_url
from appliance.integrations.esphome.pipeline import EV, Pipeline
from appliance.integrations.esphome.satellite import Satellite
from appliance.turns import BrainOutput, ReplyChunk, Transcript, TurnRequest

log = logging.getLogger(__name__)

NAME = "home_assistant"
_CHUNK = 1024  # bytes of 16 kHz s16le per VoiceAssistantAudio (32 ms), what ESPHome devices send
_NOTHING_HEARD = {"stt-no-text-recognized", "no_text_recognized"}


class HomeAssistantBrain:
    name = NAME

    def __init__(self, satellite: Satellite) -> None:
        self.satellite = satellite
        satellite.brain_present = True

    async def probe(self) -> None:
        if not self.satellite.available:
            raise ProviderUnavailable(NAME, "Home Assistant is not connected (no voice subscription)")

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            sat = self.satellite
            if not sat.available:
                raise ProviderUnavailable(NAME, "Home Assistant is not connected (no voice subscription)")
            pipeline = sat.claim()
            if pipeline is not None:
                pipeline.end_audio()
            else:
                audio = request.utterance.audio
                if audio is None:
                    raise ProviderRejected(NAME, "Assist over the ESPHome API takes speech, not typed text")
                pipeline = sat.start_pipeline()
                pipeline.claimed = True
                pcm = audio.pcm() if audio.sample_rate == 16_000 else _resampled(audio)
                for start in range(0, len(pcm), _CHUNK):
                    pipeline.feed(pcm[start : start + _CHUNK])
                pipeline.end_audio()
            done = False
            try:
                await self._follow(pipeline, out, request.turn_id)
                done = True
            finally:
                if not done:
                    pipeline.abort("turn interrupted")

    async def _follow(self, pipeline: Pipeline, out: trio.MemorySendChannel[BrainOutput], turn_id: str) -> None:
        with single_error():
            async with trio.open_nursery() as nursery:
                await self._events(pipeline, out, nursery, turn_id)

    async def _events(
        self, pipeline: Pipeline, out: trio.MemorySendChannel[BrainOutput], nursery: trio.Nursery, turn_id: str
    ) -> None:
        config = self.satellite.config
        timeout = config.reply_timeout
        reply_text = ""
        early_url = ""  # the streaming TTS URL Home Assistant announces at RUN_START
        streaming_early = False
        while True:
            with trio.move_on_after(timeout) as late:
                try:
                    event = await pipeline.events.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
            if late.cancelled_caught:
                raise ProviderTimeout(NAME, f"no pipeline event for {timeout:g} s")
            kind, data = event.kind, event.data
            if kind == EV("VOICE_ASSISTANT_ERROR"):
                code = data.get("code", "")
                if code in _NOTHING_HEARD:
                    log.info("Assist heard nothing", extra={"brain": NAME})
                    return
                if code == "connection":
                    raise ProviderUnavailable(NAME, data.get("message", "connection lost"))
                raise ProviderBadReply(NAME, f"{code}: {data.get('message', '')}"[:200])
            if kind == EV("VOICE_ASSISTANT_RUN_START"):
                early_url = data.get("url", "")
            elif kind == EV("VOICE_ASSISTANT_INTENT_PROGRESS"):
                if data.get("tts_start_streaming") == "1" and early_url and not streaming_early:
                    # An LLM agent is still writing: its speech can start now, before the intent ends.
                    streaming_early = True
                    stream = await nursery.start(stream_url, early_url, config.tts_timeout)
                    await out.send(ReplyChunk("", "", (), stream))
            elif kind == EV("VOICE_ASSISTANT_STT_END"):
                text = data.get("text", "").strip()
                if text:
                    await out.send(Transcript(text))
            elif kind == EV("VOICE_ASSISTANT_INTENT_END"):
                if data.get("conversation_id"):
                    self.satellite.remember_conversation(data["conversation_id"])
                if data.get("continue_conversation") == "1":
                    self.satellite.continue_after = turn_id  # Assist asked a question: listen again after it
            elif kind == EV("VOICE_ASSISTANT_TTS_START"):
                reply_text = data.get("text", "")
                if streaming_early and reply_text:
                    await out.send(ReplyChunk(reply_text, "", (), None))  # the words, for the history
            elif kind == EV("VOICE_ASSISTANT_TTS_END") and not streaming_early:
                url = data.get("url", "")
                if not url:
                    raise ProviderBadReply(NAME, "TTS ended without a URL")
                stream = await nursery.start(stream_url, url, config.tts_timeout)
                await out.send(ReplyChunk(reply_text, reply_text, (), stream))
            elif kind == EV("VOICE_ASSISTANT_RUN_END"):
                return

    async def aclose(self) -> None:
        return None


def _resampled(audio) -> bytes:
    from appliance.audio.base import AudioClip
    from appliance.audio.convert import resample

    return AudioClip(resample(audio.samples, audio.sample_rate, 16_000), 16_000).pcm()
