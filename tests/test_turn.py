"""Whole turns through the real SDKs against the fake cloud on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from appliance import errors
from appliance.audio.base import AudioClip
from appliance.audio.convert import read_wav
from appliance.audio.playback import MemorySink, WavFileSink
from appliance.audio.sources import WavFileSource
from appliance.events import (
    AnimationRequested,
    CancelTurnRequested,
    FaceRequested,
    Heard,
    SentenceStarted,
    SpeechStarted,
    State,
    StateChanged,
    TurnFinished,
    TurnStarted,
)
from appliance.turns import Utterance
from tests.fakes.cloud import fake_cloud
from tests.harness import cloud_config, running_appliance

SPEECH = Utterance(audio=AudioClip.silence(0.6))


async def test_full_turn_wav_in_wav_out(speech_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "reply.wav"
    async with fake_cloud() as cloud:
        config = cloud_config(cloud.url)
        source = WavFileSource(speech_wav, lead_in=0.3, speed=4.0)
        sink = WavFileSink(out, realtime=False)
        async with running_appliance(config, source=source, sink=sink) as (app, log):
            finished = await log.wait_for(TurnFinished)
            await log.wait_for(StateChanged, lambda e: e.new is State.IDLE and e.old is State.SPEAKING)

    assert finished.outcome == "done", finished
    assert log.of(Heard)[0].text == "What time is it?"
    # The reply was spoken: every TTS clip reached the speaker, in order.
    reply = read_wav(out)
    assert reply.duration > 0.2
    sentences = ["It is nine o'clock.", "Time for breakfast!", "Have a nice day."]
    assert [e.text for e in log.of(SentenceStarted)] == sentences  # played in the order written
    # Synthesized ahead in parallel, so the server may see them in any order, each exactly once.
    assert sorted(body["input"] for body in cloud.bodies("/v1/audio/speech")) == sorted(sentences)
    # The audio sent to speech-to-text was the captured utterance: a WAV longer than the phrase itself.
    stt = cloud.bodies("/v1/audio/transcriptions")
    assert len(stt) == 1 and stt[0]["bytes"] > read_wav(speech_wav).duration * 16000 * 2
    # The state walked the whole way round.
    states = [e.new for e in log.of(StateChanged)]
    assert states[:4] == [State.LISTENING, State.THINKING, State.SPEAKING, State.IDLE]


async def test_tags_become_events_in_order_and_are_not_spoken() -> None:
    async with fake_cloud() as cloud:
        async with running_appliance(cloud_config(cloud.url)) as (app, log):
            await app.conversation.start_turn(SPEECH)
            finished = await log.wait_for(TurnFinished)
    assert finished.outcome == "done"
    order = [
        (type(e).__name__, getattr(e, "name", getattr(e, "index", None)))
        for e in log.events
        if isinstance(e, SentenceStarted | FaceRequested | AnimationRequested)
    ]
    assert order == [
        ("SentenceStarted", 0),
        ("FaceRequested", "joy"),
        ("SentenceStarted", 1),
        ("SentenceStarted", 2),
        ("AnimationRequested", "wave"),
    ]
    assert all("[" not in body["input"] for body in cloud.bodies("/v1/audio/speech"))
    # History keeps what the model wrote, tags included, so it keeps using them.
    history = app.conversation.history.messages()
    assert [m.role for m in history] == ["user", "assistant"]
    assert history[1].content.startswith("[face:joy]")


async def test_anthropic_llm() -> None:
    async with fake_cloud() as cloud:
        config = cloud_config(cloud.url, llm__provider="anthropic", llm__base_url=cloud.url)
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(SPEECH)
            finished = await log.wait_for(TurnFinished)
    assert finished.outcome == "done"
    assert cloud.paths().count("/v1/messages") == 1
    body = cloud.bodies("/v1/messages")[0]
    assert body["stream"] is True and "Robo" in body["system"]
    assert body["messages"] == [{"role": "user", "content": "What time is it?"}]


async def test_history_is_sent_on_the_next_turn_and_system_prompt_has_params() -> None:
    async with fake_cloud() as cloud:
        config = cloud_config(cloud.url, conversation__system_prompt_params={"name": "Pico"})
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(SPEECH)
            await log.wait_for(TurnFinished)
            await app.conversation.start_turn(Utterance(text="And tomorrow?"))
            await log.wait_for(TurnFinished, lambda e: len(log.of(TurnFinished)) == 2)
    second = cloud.bodies("/v1/chat/completions")[1]["messages"]
    assert second[0]["role"] == "system" and "Pico" in second[0]["content"]
    assert [m["role"] for m in second[1:]] == ["user", "assistant", "user"]
    assert second[-1]["content"] == "And tomorrow?"
    # A typed utterance skips speech-to-text.
    assert cloud.paths().count("/v1/audio/transcriptions") == 1


@pytest.mark.parametrize("how", ["button", "voice"])
async def test_barge_in_stops_playback_closes_streams_and_keeps_spoken_history(how: str) -> None:
    reply = "[face:fun] This is the first sentence. " + " ".join(f"Sentence number {i} follows." for i in range(30))
    async with fake_cloud(reply=reply, seconds_per_char=0.02) as cloud:
        cloud.llm.token_delay = 0.02  # the LLM is still streaming when the user interrupts
        sink = MemorySink(realtime=True)
        async with running_appliance(cloud_config(cloud.url), sink=sink) as (app, log):
            await app.conversation.start_turn(SPEECH)
            await log.wait_for(SentenceStarted)
            await sink.block_written.wait()
            event = CancelTurnRequested("test") if how == "button" else SpeechStarted(barge_in=True)
            at_barge_in = sink.played_samples
            app.bus.publish(event)
            finished = await log.wait_for(TurnFinished)
            played = sink.played_samples
            # End to end, counted in blocks: the bus, the conversation and the turn's cancel scope let at most
            # two more blocks out after the barge-in was announced.
            block = sink.sample_rate * sink.block_ms // 1000
            assert played - at_barge_in <= 2 * block, (played - at_barge_in, block)
            await trio.sleep(0.3)
            with trio.fail_after(5):
                await cloud.disconnected.wait()
            assert sink.played_samples == played, "playback went on after the turn was cancelled"
    assert finished.outcome == "interrupted"
    assert cloud.disconnects >= 1  # the server saw the LLM (and/or TTS) stream close
    history = app.conversation.history.messages()
    assert history[-1].role == "assistant"
    assert history[-1].content.startswith("[face:fun] This is the first sentence.")
    assert "Sentence number 29" not in history[-1].content
    assert len(log.of(SentenceStarted)) < 31


async def test_empty_transcript_ends_quietly() -> None:
    async with fake_cloud(transcript="") as cloud:
        async with running_appliance(cloud_config(cloud.url)) as (app, log):
            await app.conversation.start_turn(SPEECH)
            finished = await log.wait_for(TurnFinished)
    assert finished.outcome == "empty"
    assert "/v1/chat/completions" not in cloud.paths()
    assert app.conversation.history.messages() == ()


FAULTS = {
    "llm-429": ("llm", {"status": 429, "retry_after": 2}, "ProviderUnavailable"),
    "llm-500": ("llm", {"status": 500}, "ProviderUnavailable"),
    "llm-401": ("llm", {"status": 401}, "ProviderRejected"),
    "llm-cut": ("llm", {"cut": "abort"}, "ProviderBadReply"),
    "llm-truncated": ("llm", {"cut": "truncate"}, "ProviderBadReply"),
    "llm-hang": ("llm", {"hang": True}, "ProviderTimeout"),
    "llm-hang-mid-stream": ("llm", {"hang_mid_stream": True}, "ProviderTimeout"),
    "stt-500": ("stt", {"status": 500}, "ProviderUnavailable"),
    "stt-hang": ("stt", {"hang": True}, "ProviderTimeout"),
    "tts-500": ("tts", {"status": 500}, "ProviderUnavailable"),
    "tts-cut": ("tts", {"cut": "abort"}, "ProviderError"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_faults_fail_the_turn_cleanly_and_the_next_turn_works(fault: str) -> None:
    endpoint, behaviour, expected = FAULTS[fault]
    async with fake_cloud() as cloud:
        for key, value in behaviour.items():
            setattr(getattr(cloud, endpoint), key, value)
        config = cloud_config(
            cloud.url, llm__timeout=1.0, stt__timeout=1.0, tts__timeout=1.0, conversation__error_display=0.3
        )
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(SPEECH)
            failed = await log.wait_for(TurnFinished)
            await log.wait_for(StateChanged, lambda e: e.new is State.ERROR)
            await log.wait_for(StateChanged, lambda e: e.old is State.ERROR and e.new is State.IDLE, timeout=10)
            # The cloud recovers; the appliance never stopped.
            cloud.reset()
            await app.conversation.start_turn(SPEECH)
            recovered = await log.wait_for(TurnFinished, lambda e: e.turn_id != failed.turn_id)
    assert failed.outcome == "failed"
    assert failed.error is not None and failed.error.startswith(f"openai-{endpoint}")
    assert failed.error_kind is not None
    assert issubclass(getattr(errors, failed.error_kind), getattr(errors, expected))
    assert recovered.outcome == "done"
    assert all(r.status == "running" for r in app.supervisor.records.values() if r.required)


async def test_turn_started_names_the_brain() -> None:
    async with fake_cloud() as cloud:
        async with running_appliance(cloud_config(cloud.url)) as (app, log):
            await app.conversation.start_turn(SPEECH)
            await log.wait_for(TurnFinished)
    assert log.of(TurnStarted)[0].brain == "cloud"


async def test_connections_are_opened_while_the_user_speaks_and_not_again_while_warm() -> None:
    async with fake_cloud() as cloud:
        async with running_appliance(cloud_config(cloud.url)) as (app, log):
            with trio.fail_after(10):  # at start-up, right after READY
                while cloud.paths().count("/v1/models") < 3:
                    await trio.sleep(0.01)
            await app.conversation.start_turn(SPEECH)
            await log.wait_for(TurnFinished)
            app.bus.publish(SpeechStarted())
            await trio.sleep(0.3)
            # One warm-up per service (STT, LLM, TTS) at start; the turn kept them warm, so onset added none.
            assert cloud.paths().count("/v1/models") == 3
            brain = await app.brain.ensure()  # type: ignore[attr-defined]
            brain.stt.warmth.last_used = float("-inf")  # as if the robot had been idle for minutes
            app.bus.publish(SpeechStarted())
            with trio.fail_after(10):
                while cloud.paths().count("/v1/models") < 4:
                    await trio.sleep(0.01)
    assert cloud.paths().count("/v1/models") == 4


async def test_speech_plays_while_it_is_still_being_downloaded() -> None:
    async with fake_cloud(
        reply="[face:joy] This sentence takes a while to synthesize.", seconds_per_char=0.05
    ) as cloud:
        cloud.tts.token_delay = 0.05  # each 100 ms piece of audio comes 50 ms after the last
        sink = MemorySink(realtime=True)
        async with running_appliance(cloud_config(cloud.url), sink=sink) as (app, log):
            await app.conversation.start_turn(SPEECH)
            finished = await log.wait_for(TurnFinished)
    speech = [r for r in cloud.requests if r.path == "/v1/audio/speech"]
    assert finished.outcome == "done" and len(speech) == 1
    assert speech[0].finished_at is not None and sink.first_block_at is not None
    # Both stamps come from time.monotonic() in this process (trio's clock is monotonic-based but offset).
    first_block = sink.first_block_at - trio.current_time() + time.monotonic()
    assert first_block < speech[0].finished_at, "playback waited for the whole download"
    # Nothing was lost between pieces: 2.4 s of speech at 24 kHz reached the speaker.
    assert abs(sink.played_samples - int(len("This sentence takes a while to synthesize.") * 0.05 * 24000)) < 480


async def test_speech_piece_is_played_as_it_arrives_however_small() -> None:
    """A TTS engine sends what it has made so far; waiting for a round size first would delay the first word."""
    from contextlib import aclosing

    from appliance.providers.tts.openai import OpenAISynthesizer

    async with fake_cloud(seconds_per_char=0.05) as cloud:
        cloud.tts_piece_bytes = 960  # 20 ms of audio, then a long pause before the next
        cloud.tts.token_delay = 30
        tts = OpenAISynthesizer("tts-1", "alloy", "test-key", f"{cloud.url}/v1")
        with trio.fail_after(5):
            async with aclosing(tts.synthesize_stream("Hello there.")) as pieces:
                first = await anext(pieces)
        await tts.aclose()
        assert len(first.samples) == 480 and first.sample_rate == 24_000
        with trio.fail_after(5):
            await cloud.disconnected.wait()  # and the rest is not downloaded once nobody wants it


async def test_speech_cut_mid_download_plays_what_arrived_then_fails_the_turn() -> None:
    async with fake_cloud(reply="One long sentence that will be cut.", seconds_per_char=0.05) as cloud:
        cloud.tts.cut = "abort"
        sink = MemorySink(realtime=False)
        async with running_appliance(cloud_config(cloud.url), sink=sink) as (app, log):
            await app.conversation.start_turn(SPEECH)
            finished = await log.wait_for(TurnFinished)
    assert finished.outcome == "failed" and finished.error_kind == "ProviderBadReply"
    # What was played: the part of the sentence that arrived, then the line saying the connection went.
    from appliance.conversation.local_voice import LocalVoice

    line = await LocalVoice().say("Sorry, I lost my connection.")
    assert line is not None
    sentence_samples = sink.played_samples - round(line.duration * sink.sample_rate)
    assert 0 < sentence_samples < int(len("One long sentence that will be cut.") * 0.05 * 24000)
    # ... and exactly that is what the turn says was said: a cut-off start of the sentence, then the line.
    heard, _, said_line = finished.spoken.rpartition(" Sorry")
    assert said_line == ", I lost my connection." and "One long sentence that will be cut.".startswith(
        heard.rstrip("…")
    )
    assert heard.endswith("…") or heard == ""


async def test_an_announcement_is_not_taken_for_something_the_user_said() -> None:
    from appliance.brains.scripted import ScriptedBrain
    from appliance.conversation.local_voice import LocalVoice

    async with fake_cloud() as cloud:
        async with running_appliance(cloud_config(cloud.url)) as (app, log):
            await app.conversation.start_turn(
                Utterance(text="Dinner is ready.", announce=True), brain=ScriptedBrain("Dinner is ready.", LocalVoice())
            )
            await log.wait_for(TurnFinished)
            await app.conversation.start_turn(SPEECH)
            await log.wait_for(TurnFinished, lambda e: len(log.of(TurnFinished)) == 2)
    assert not log.of(Heard)[:-1]  # only the real user's words were heard
    messages = cloud.bodies("/v1/chat/completions")[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]  # the model's history starts with the user
