"""Assist pipelines end to end: aioesphomeapi plays Home Assistant with a fake pipeline (events, and a TTS
WAV served over HTTP on 127.0.0.1); the robot streams its audio, shows the transcript and plays the reply."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import trio

from appliance.audio.base import AudioClip
from appliance.events import (
    CancelTurnRequested,
    Heard,
    ListenRequested,
    SentenceStarted,
    TurnFinished,
    TurnStarted,
    WakeWordDetected,
)
from appliance.turns import Utterance
from tests.esphome_helpers import HomeAssistant, WavServer, esphome_appliance, home_assistant, tone_wav

E = "VOICE_ASSISTANT_"


class FakePipeline:
    """What Home Assistant's assist_satellite does with our audio, scripted: when the audio ends it sends the
    events of a run (or an error) and the URL of its speech."""

    def __init__(
        self,
        ha: HomeAssistant,
        tts_url: str,
        *,
        text: str = "turn on the kitchen light",
        reply: str = "Turned on the light",
        error: str | None = None,
        streaming: bool = False,
        ask: bool = False,
    ) -> None:
        self.ha = ha
        self.tts_url = tts_url
        self.text = text
        self.reply = reply
        self.error = error
        self.streaming = streaming  # announce the TTS URL at RUN_START and start it during the intent
        self.ask = ask  # continue_conversation: the reply is a question
        self.starts: list[tuple[str, int, str | None]] = []
        self.audio = bytearray()
        self.stops: list[bool] = []
        self.finished = asyncio.Event()

    async def subscribe(self) -> None:
        await self.ha.call_soon(
            lambda: self.ha.client.subscribe_voice_assistant(
                handle_start=self.start,
                handle_stop=self.stop,
                handle_audio=self.on_audio,
            )
        )

    async def start(self, conversation_id: str, flags: int, settings: Any, wake_word: str | None) -> int:
        self.starts.append((conversation_id, flags, wake_word))
        return 0  # 0 = "send the audio over the API"

    async def on_audio(self, data: bytes, data2: bytes | None) -> None:
        self.audio.extend(data)

    async def stop(self, abort: bool) -> None:
        self.stops.append(abort)
        if abort:
            return
        from aioesphomeapi.model import VoiceAssistantEventType as T

        send = self.ha.client.send_voice_assistant_event
        send(T.VOICE_ASSISTANT_RUN_START, {"url": self.tts_url} if self.streaming else None)
        send(T.VOICE_ASSISTANT_STT_START, None)
        if self.error:
            send(T.VOICE_ASSISTANT_ERROR, {"code": self.error, "message": "the pipeline failed"})
            send(T.VOICE_ASSISTANT_RUN_END, None)
            return
        send(T.VOICE_ASSISTANT_STT_END, {"text": self.text})
        send(T.VOICE_ASSISTANT_INTENT_START, None)
        if self.streaming:
            send(T.VOICE_ASSISTANT_INTENT_PROGRESS, {"tts_start_streaming": "1"})
        ask = "1" if self.ask else "0"
        send(T.VOICE_ASSISTANT_INTENT_END, {"conversation_id": "conv-1", "continue_conversation": ask})
        send(T.VOICE_ASSISTANT_TTS_START, {"text": self.reply})
        send(T.VOICE_ASSISTANT_TTS_END, {"url": self.tts_url})
        send(T.VOICE_ASSISTANT_RUN_END, None)


def speech(seconds: float = 0.6) -> AudioClip:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return AudioClip((np.sin(2 * np.pi * 220 * t) * 5000).astype(np.int16), 16_000)


async def test_an_utterance_runs_through_assist_and_the_reply_is_played() -> None:
    body, tone = tone_wav(0.5)
    with WavServer(body) as web:
        async with esphome_appliance() as (app, log, server, sink), home_assistant(server.port) as ha:
            fake = FakePipeline(ha, f"{web.url}/tts.wav")
            await fake.subscribe()
            with trio.fail_after(10):
                while not server.satellite.available:
                    await trio.sleep(0.02)
            clip = speech(0.6)
            await app.conversation.start_turn(Utterance(audio=clip))
            heard = await log.wait_for(Heard)
            assert heard.text == "turn on the kitchen light"
            finished = await log.wait_for(TurnFinished)
            assert finished.outcome == "done", finished
            assert finished.spoken == "Turned on the light"
            assert fake.starts and fake.starts[0][2] is None  # no wake word: the utterance came whole
            assert bytes(fake.audio) == clip.pcm()  # every sample, in order
            assert fake.stops == [False]  # audio ended normally, nothing aborted
            played = sink.audio.samples
            assert len(played) >= len(tone.samples) * 0.95
            assert np.abs(played).max() > 4000  # the tone, not silence
            assert web.requests == ["/tts.wav"]
            assert server.satellite._conversation_id == "conv-1"


async def test_a_wake_word_starts_streaming_at_once_and_the_brain_claims_the_pipeline() -> None:
    body, _tone = tone_wav(0.3)
    with WavServer(body) as web:
        async with esphome_appliance() as (app, log, server, sink), home_assistant(server.port) as ha:
            fake = FakePipeline(ha, f"{web.url}/tts.wav")
            await fake.subscribe()
            with trio.fail_after(10):
                while not server.satellite.available:
                    await trio.sleep(0.02)
            app.bus.publish(WakeWordDetected("okay nabu", 0.97))
            with trio.fail_after(10):
                while len(fake.audio) < 640 * 5:  # the (silent) microphone streams live
                    await trio.sleep(0.02)
            assert fake.starts[0][2] == "okay nabu"
            pipeline = server.satellite.pipeline
            assert pipeline is not None and pipeline.first_audio_at is not None
            streamed = len(fake.audio)
            await app.conversation.start_turn(Utterance(audio=speech(0.6)))
            finished = await log.wait_for(TurnFinished)
            assert finished.outcome == "done"
            assert server.satellite.pipelines == 1  # the live pipeline was used, not a second one
            assert len(fake.audio) < streamed + 640 * 50  # the utterance was not sent again whole
            assert fake.stops == [False]


async def test_an_assist_error_fails_over_to_the_next_brain(caplog: pytest.LogCaptureFixture) -> None:
    async with esphome_appliance() as (app, log, server, sink), home_assistant(server.port) as ha:
        fake = FakePipeline(ha, "http://127.0.0.1:9/unused.wav", error="intent-failed")
        await fake.subscribe()
        with trio.fail_after(10):
            while not server.satellite.available:
                await trio.sleep(0.02)
        await app.conversation.start_turn(Utterance(audio=speech(0.3)))
        finished = await log.wait_for(TurnFinished)
        assert finished.outcome == "done"
        assert app.brain.active == "offline"
        assert "connected" in finished.spoken  # the offline brain's line
        assert "intent-failed" in caplog.text and "crashed" not in caplog.text  # a ProviderBadReply, not a bug


async def test_without_home_assistant_the_next_brain_answers_at_once() -> None:
    async with esphome_appliance() as (app, log, _server, _sink):
        await app.conversation.start_turn(Utterance(audio=speech(0.3)))
        finished = await log.wait_for(TurnFinished)
        assert finished.outcome == "done" and app.brain.active == "offline"


async def test_a_failing_tts_url_is_an_error_not_a_hang() -> None:
    body, _tone = tone_wav(0.3)
    with WavServer(body) as web:
        async with esphome_appliance() as (app, log, server, _sink), home_assistant(server.port) as ha:
            fake = FakePipeline(ha, f"{web.url}/missing.mp3")
            await fake.subscribe()
            with trio.fail_after(10):
                while not server.satellite.available:
                    await trio.sleep(0.02)
            await app.conversation.start_turn(Utterance(audio=speech(0.3)))
            finished = await log.wait_for(TurnFinished)
            assert app.brain.active == "offline"  # HTTP 404 before any speech: the next brain answered
            assert finished.outcome == "done"


async def test_announcement_is_played_and_acknowledged_then_a_conversation_starts() -> None:
    body, tone = tone_wav(0.4)
    with WavServer(body) as web:
        async with esphome_appliance() as (app, log, server, sink), home_assistant(server.port) as ha:
            await FakePipeline(ha, "").subscribe()
            result = await ha.run(
                lambda: ha.client.send_voice_assistant_announcement_await_response(
                    f"{web.url}/announce.wav",
                    10,
                    text="Dinner is ready",
                    preannounce_media_id=f"{web.url}/missing-chime",
                    start_conversation=True,
                )
            )
            assert result.success is True
            sentence = await log.wait_for(SentenceStarted, lambda e: e.text == "Dinner is ready")
            assert sentence.index == 0  # the missing chime was tried, skipped; the message spoken
            assert web.requests == ["/missing-chime", "/announce.wav"]
            assert len(sink.audio.samples) >= len(tone.samples) * 0.95
            await log.wait_for(ListenRequested, lambda e: e.source == "home_assistant")


async def test_a_finished_timer_rings_until_stopped() -> None:
    async with esphome_appliance(timer_ring_seconds=30) as (app, log, server, sink), home_assistant(server.port) as ha:
        from aioesphomeapi.model import VoiceAssistantTimerEventType as T

        await FakePipeline(ha, "").subscribe()
        send = ha.client.send_voice_assistant_timer_event
        await ha.call_soon(lambda: send(T.VOICE_ASSISTANT_TIMER_STARTED, "t1", "pasta", 600, 600, True))
        with trio.fail_after(10):
            while "t1" not in server.satellite.timers:
                await trio.sleep(0.02)
        assert server.satellite.timers["t1"]["name"] == "pasta"
        await ha.call_soon(lambda: send(T.VOICE_ASSISTANT_TIMER_FINISHED, "t1", "pasta", 600, 0, False))
        started = await log.wait_for(TurnStarted)
        await log.wait_for(SentenceStarted, lambda e: e.turn_id == started.turn_id)
        assert "t1" not in server.satellite.timers
        app.bus.publish(CancelTurnRequested(source="button"))
        finished = await log.wait_for(TurnFinished, lambda e: e.turn_id == started.turn_id)
        assert finished.outcome == "interrupted"


async def test_wake_word_settings_map_onto_our_models() -> None:
    class Spec:
        def __init__(self, ident: str) -> None:
            self.id = ident

    class Model:
        def __init__(self, ident: str) -> None:
            self.spec = Spec(ident)

    class Detector:
        models = [Model("okay_nabu"), Model("hey_jarvis")]

    class Listening:
        wake = Detector()

    async with esphome_appliance() as (_app, _log, server, _sink), home_assistant(server.port) as ha:
        sat = server.satellite
        sat.wake_words = Listening()
        sat.wake_word_catalogue = [("okay_nabu", "Okay Nabu"), ("hey_jarvis", "Hey Jarvis")]
        config = await ha.run(lambda: ha.client.get_voice_assistant_configuration(5))
        assert {w.id for w in config.available_wake_words} == {"okay_nabu", "hey_jarvis"}
        assert config.active_wake_words == ["okay_nabu", "hey_jarvis"]
        assert config.max_active_wake_words == 2
        await ha.run(lambda: ha.client.set_voice_assistant_configuration(["hey_jarvis", "not_ours"]))
        with trio.fail_after(10):
            while [m.spec.id for m in Listening.wake.models] != ["hey_jarvis"]:
                await trio.sleep(0.02)
        config = await ha.run(lambda: ha.client.get_voice_assistant_configuration(5))
        assert config.active_wake_words == ["hey_jarvis"]


async def connected(server: Any, ha: HomeAssistant, fake: FakePipeline) -> None:
    await fake.subscribe()
    with trio.fail_after(10):
        while not server.satellite.available:
            await trio.sleep(0.02)


async def test_streaming_tts_starts_during_the_intent_and_is_fetched_once() -> None:
    body, tone = tone_wav(0.5)
    with WavServer(body) as web:
        async with esphome_appliance() as (app, log, server, sink), home_assistant(server.port) as ha:
            fake = FakePipeline(ha, f"{web.url}/stream.wav", streaming=True)
            await connected(server, ha, fake)
            await app.conversation.start_turn(Utterance(audio=speech(0.3)))
            finished = await log.wait_for(TurnFinished)
            assert finished.outcome == "done"
            assert finished.spoken.strip() == "Turned on the light"  # the words reach the history
            assert web.requests == ["/stream.wav"]  # TTS_END's URL is the one already playing
            assert len(sink.audio.samples) >= len(tone.samples) * 0.95


async def test_a_question_from_assist_opens_the_microphone_again() -> None:
    body, _tone = tone_wav(0.2)
    with WavServer(body) as web:
        async with esphome_appliance() as (app, log, server, _sink), home_assistant(server.port) as ha:
            fake = FakePipeline(ha, f"{web.url}/tts.wav", reply="Which light?", ask=True)
            await connected(server, ha, fake)
            await app.conversation.start_turn(Utterance(audio=speech(0.3)))
            finished = await log.wait_for(TurnFinished)
            assert finished.outcome == "done"
            await log.wait_for(ListenRequested, lambda e: e.source == "home_assistant")
            with trio.fail_after(10):
                while len(fake.starts) < 2:  # and a new pipeline streams the answer
                    await trio.sleep(0.02)


async def test_barge_in_stops_the_assist_reply() -> None:
    body, tone = tone_wav(4.0)
    with WavServer(body) as web:
        async with esphome_appliance(realtime=True) as (app, log, server, sink), home_assistant(server.port) as ha:
            fake = FakePipeline(ha, f"{web.url}/tts.wav")
            await connected(server, ha, fake)
            await app.conversation.start_turn(Utterance(audio=speech(0.3)))
            started = await log.wait_for(SentenceStarted)
            await sink.block_written.wait()
            app.bus.publish(CancelTurnRequested(source="button"))
            finished = await log.wait_for(TurnFinished, lambda e: e.turn_id == started.turn_id)
            assert finished.outcome == "interrupted"
            assert len(sink.audio.samples) < len(tone.samples) / 2


async def test_events_out_of_order_and_a_silent_pipeline(caplog: pytest.LogCaptureFixture) -> None:
    """Events with no pipeline, a stop for nothing, an unknown timer, an empty announcement: ignored or refused;
    a pipeline that goes silent after the audio is a timeout, and failover answers."""
    from aioesphomeapi.model import VoiceAssistantEventType as T
    from aioesphomeapi.model import VoiceAssistantTimerEventType as TT

    async with esphome_appliance(reply_timeout=0.5) as (app, log, server, _sink), home_assistant(server.port) as ha:
        fake = FakePipeline(ha, "")
        fake.stop = _silent_stop  # type: ignore[method-assign]
        await connected(server, ha, fake)
        client = ha.client
        await ha.call_soon(lambda: client.send_voice_assistant_event(T.VOICE_ASSISTANT_TTS_END, {"url": "http://x/"}))
        await ha.call_soon(lambda: client.send_voice_assistant_event(T.VOICE_ASSISTANT_RUN_END, None))
        await ha.call_soon(
            lambda: client.send_voice_assistant_timer_event(
                TT.VOICE_ASSISTANT_TIMER_CANCELLED, "nope", None, 0, 0, False
            )
        )
        result = await ha.run(lambda: client.send_voice_assistant_announcement_await_response("", 5))
        assert result.success is False
        await app.conversation.start_turn(Utterance(audio=speech(0.3)))
        finished = await log.wait_for(TurnFinished)
        assert finished.outcome == "done" and app.brain.active == "offline"
        assert "no pipeline event for 0.5 s" in caplog.text
        assert app.supervisor.records["esphome"].status == "running"


async def _silent_stop(abort: bool) -> None:
    return None  # a Home Assistant that takes the audio and never answers


async def test_a_second_home_assistant_takes_over_the_voice() -> None:
    async with esphome_appliance() as (_app, _log, server, _sink):
        async with home_assistant(server.port) as first, home_assistant(server.port) as second:
            await connected(server, first, FakePipeline(first, ""))
            first_conn = server.satellite.peer
            await connected(server, second, FakePipeline(second, ""))
            with trio.fail_after(10):
                while server.satellite.peer is first_conn:
                    await trio.sleep(0.02)
            assert len(server.connections) == 2  # both still served; voice goes to the newest subscriber
        with trio.fail_after(10):
            while server.satellite.available:
                await trio.sleep(0.02)


async def test_the_media_player_plays_a_url() -> None:
    body, tone = tone_wav(0.4)
    with WavServer(body) as web:
        async with esphome_appliance() as (_app, log, server, sink), home_assistant(server.port) as ha:
            entities, _ = await ha.run(lambda: ha.client.list_entities_services())
            key = next(e.key for e in entities if e.object_id == "media_player")
            await ha.call_soon(lambda: ha.client.media_player_command(key, media_url=f"{web.url}/song.wav"))
            await log.wait_for(TurnFinished, lambda e: e.outcome == "done")
            assert web.requests == ["/song.wav"]
            assert len(sink.audio.samples) >= len(tone.samples) * 0.95


async def test_muting_stops_a_streaming_pipeline() -> None:
    from appliance.events import MuteRequested

    async with esphome_appliance() as (app, _log, server, _sink), home_assistant(server.port) as ha:
        fake = FakePipeline(ha, "")
        await connected(server, ha, fake)
        app.bus.publish(WakeWordDetected("okay nabu", 0.97))
        with trio.fail_after(10):
            while not fake.audio:
                await trio.sleep(0.02)
        app.bus.publish(MuteRequested(True, source="button"))
        with trio.fail_after(10):
            while fake.stops != [True]:  # Home Assistant is told to abort the run
                await trio.sleep(0.02)
        streamed = len(fake.audio)
        await trio.sleep(0.2)
        assert len(fake.audio) == streamed  # and no more of the microphone reaches it
