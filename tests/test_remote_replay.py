"""RemoteBrain against frames recorded from the real AIAvatarKit 0.9.2 (tests/fixtures/aiavatar), replayed.

``make interop-test`` runs the same turns against the real server; these keep its sequences in the fast suite:
the ``stop`` without transaction_id before every reply, the lost ``start`` of text requests, the previous
transaction's ``interrupted`` final on every later request, PCM frames that repeat their format, and sentence
text that ends in a space. The last tests check that the fake's made-up frames still look like the recorded ones.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from appliance.audio.base import AudioStream
from appliance.brains.failover import FailoverBrain
from appliance.brains.remote import RemoteBrain, RemoteCanceled
from appliance.bus import EventBus
from appliance.errors import ProviderBadReply
from appliance.events import CancelTurnRequested
from appliance.settings.brains import FailoverConfig
from appliance.turns import BrainOutput, ReplyChunk
from tests.fakes.aiavatar import RESPONSE_FIELDS, FakeAvatarServer, recording, replayed_frames
from tests.remote_helpers import StubBrain, collect, heard, loopback_clock, remote, request, speech, spoken

SENTENCES = ["Nice to meet you.", "I am a test robot!", "Have a nice day."]
CONFIG = FailoverConfig(failure_threshold=2, open_initial=5, open_max=40, first_audio_timeout=8, probe_timeout=2)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return loopback_clock()


@pytest.fixture
async def server(nursery: trio.Nursery) -> FakeAvatarServer:
    fake = FakeAvatarServer(replay=True)
    await nursery.start(fake.run)
    return fake


def tags(items: list[BrainOutput]) -> list[tuple[str, str]]:
    return [(t.name, t.value) for i in items if isinstance(i, ReplyChunk) for t in i.tags]


async def test_recorded_text_reply_is_spoken_with_faces(server: FakeAvatarServer) -> None:
    items = await collect(remote(server.url), request("Hello robot"))
    assert heard(items) == ["Hello robot"]  # the real server lost its `start`: we know what we asked
    assert spoken(items) == SENTENCES  # its `stop` before the reply did not end the turn
    assert ("face", "joy") in tags(items) and ("animation", "wave") in tags(items)
    chunks = [i for i in items if isinstance(i, ReplyChunk) and i.voice_text]
    assert chunks[0].text == "[face:joy] Nice to meet you."  # no trailing space: joined text has single spaces
    assert " ".join(c.text for c in chunks).count("  ") == 0
    assert all(c.audio is not None and c.audio.duration > 0 for c in chunks)
    assert server.violations == []


async def test_recorded_audio_reply_reports_what_the_server_heard(server: FakeAvatarServer) -> None:
    items = await collect(remote(server.url), request(None, audio=speech(1.0)))
    assert heard(items) == ["What time is it?"]
    assert spoken(items) == SENTENCES
    assert server.violations == []


async def test_recorded_stt_failure_is_a_failure_of_that_brain(server: FakeAvatarServer) -> None:
    server.stt = lambda pcm: None
    with pytest.raises(RemoteCanceled):
        await collect(remote(server.url), request(None, audio=speech(1.0)))


async def test_recorded_pcm_reply_plays_every_sentence(nursery: trio.Nursery) -> None:
    fake = FakeAvatarServer(replay=True, pcm=True)
    await nursery.start(fake.run)
    items = await collect(remote(fake.url), request("Hello robot"))
    chunks = [i for i in items if isinstance(i, ReplyChunk) and i.voice_text]
    assert [c.voice_text for c in chunks] == SENTENCES
    assert all(isinstance(c.audio, AudioStream) for c in chunks)
    clips = [await c.audio.read_all() for c in chunks]
    recorded = [f for f in replayed_frames("pcm_text_invoke") if (f.get("metadata") or {}).get("audio_frame_count")]
    assert [len(c.samples) for c in clips] == [f["metadata"]["audio_frame_count"] for f in recorded]


async def test_later_turns_on_one_connection_ignore_the_previous_transactions_final(
    server: FakeAvatarServer, nursery: trio.Nursery
) -> None:
    brain = RemoteBrain(remote(server.url).config)
    await nursery.start(brain.run)
    first = await collect(brain, request("Hello robot", turn="t1"))
    second = await collect(brain, request("Stop, a new question", turn="t2"))
    third = await collect(brain, request(None, audio=speech(1.0), turn="t3"))
    assert spoken(first) == spoken(second) == spoken(third) == SENTENCES
    assert heard(third) == ["What time is it?"]
    assert server.connections == 1 and server.violations == []


async def test_user_barge_in_then_next_turn_is_answered(
    server: FakeAvatarServer, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    """Our side interrupts (the turn's scope is cancelled) after the first sentence; the real server keeps
    sending that reply (it reads nothing meanwhile) and only then takes the next request."""
    server.chunk_delay = 0.2
    brain = RemoteBrain(remote(server.url).config)
    await nursery.start(brain.run)
    send, receive = trio.open_memory_channel[BrainOutput](math.inf)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            inner.start_soon(brain.reply, request("Tell me a long story", turn="t1"), send)
            async for item in receive:
                if isinstance(item, ReplyChunk) and item.voice_text:
                    scope.cancel()  # the user spoke over the robot
    items = await collect(brain, request("Stop, a new question", turn="t2"))
    assert spoken(items) == SENTENCES  # nothing of the interrupted reply leaks into this one
    assert server.violations == []


async def test_server_stop_while_speaking_still_cancels_playback(nursery: trio.Nursery) -> None:
    fake = FakeAvatarServer()  # made-up frames: a stop after the first sentence (its guardrail or VAD)
    fake.fault = "stop"
    await nursery.start(fake.run)
    bus = EventBus()
    brain = RemoteBrain(remote(fake.url).config, bus=bus)
    with bus.subscribe(CancelTurnRequested, name="test") as sub:
        items = await collect(brain, request("hello robot"))
        assert sub.receive.receive_nowait().source == "remote"
    assert len(spoken(items)) == 1


async def test_a_stop_naming_another_transaction_cancels_nothing(nursery: trio.Nursery) -> None:
    fake = FakeAvatarServer()
    fake.fault = "foreign_stop"
    await nursery.start(fake.run)
    bus = EventBus()
    brain = RemoteBrain(remote(fake.url).config, bus=bus)
    with bus.subscribe(CancelTurnRequested, name="test") as sub:
        items = await collect(brain, request("hello robot"))
        with pytest.raises(trio.WouldBlock):
            sub.receive.receive_nowait()
    assert spoken(items) == ["You said: hello robot.", "That is turn 1."]


async def test_recorded_stop_before_the_reply_cancels_nothing(server: FakeAvatarServer) -> None:
    bus = EventBus()
    brain = RemoteBrain(remote(server.url).config, bus=bus)
    with bus.subscribe(CancelTurnRequested, name="test") as sub:
        await collect(brain, request("Hello robot"))
        with pytest.raises(trio.WouldBlock):
            sub.receive.receive_nowait()


async def test_a_reply_without_a_word_goes_to_the_next_brain(nursery: trio.Nursery) -> None:
    fake = FakeAvatarServer(reply=lambda text, history: [])  # start, then final: nothing said
    await nursery.start(fake.run)
    with pytest.raises(ProviderBadReply):
        await collect(remote(fake.url), request("hello robot"))
    cloud = StubBrain("cloud", ("from the cloud.",), transcript=False)
    items = await collect(FailoverBrain([remote(fake.url), cloud], CONFIG), request("hello robot"))
    assert spoken(items) == ["from the cloud."]
    assert [r.utterance.text for r in cloud.requests] == ["hello robot"]  # the same utterance, not lost


async def test_recorded_real_server_as_preferred_brain_answers_every_turn(server: FakeAvatarServer) -> None:
    cloud = StubBrain("cloud", ("from the cloud.",))
    brain = FailoverBrain([remote(server.url), cloud], CONFIG)
    for turn in range(3):
        items = await collect(brain, request("Hello robot", turn=f"t{turn}"))
        assert spoken(items) == SENTENCES
    assert cloud.requests == []


# --- the made-up frames against the recorded ones ----------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["text_invoke", "audio_invoke", "text_then_audio", "stt_failure", "barge_in", "pcm_text_invoke"]
)
def test_recorded_frames_have_the_envelope_the_fake_writes(name: str) -> None:
    for frame in recording(name)["received"]:
        assert tuple(frame) == RESPONSE_FIELDS, frame["type"]


def _shape(frames: list[dict[str, object]]) -> list[str]:
    """Non-chunk frame types in order, runs of chunks as one "chunk": what a client's logic follows."""
    out: list[str] = []
    for frame in frames:
        kind = str(frame["type"])
        if not (kind == "chunk" and out and out[-1] == "chunk"):
            out.append(kind)
    return out


@pytest.mark.parametrize(("name", "text"), [("text_invoke", "Hello robot"), ("audio_invoke", None)])
async def test_made_up_replies_follow_the_recorded_sequence(nursery: trio.Nursery, name: str, text: str | None) -> None:
    fake = FakeAvatarServer()
    await nursery.start(fake.run)
    await collect(remote(fake.url), request(text, audio=None if text else speech(1.0)))
    made_up = [f for f in fake.sent if f["type"] != "connected"]
    assert _shape(made_up) == _shape(replayed_frames(name))
    for frame in made_up:
        assert tuple(frame) == RESPONSE_FIELDS
    recorded_nulls = {
        f["type"]: {k for k, v in f.items() if v is None} for f in replayed_frames(name) if f["type"] != "chunk"
    }
    for frame in made_up:
        if frame["type"] in recorded_nulls:
            assert {k for k, v in frame.items() if v is None} == recorded_nulls[frame["type"]], frame["type"]


async def test_recorded_reply_cut_by_a_dying_server(server: FakeAvatarServer) -> None:
    from appliance.errors import ProviderUnavailable

    server.fault = "close_mid_reply"
    send, receive = trio.open_memory_channel[BrainOutput](math.inf)
    with pytest.raises(ProviderUnavailable):
        await remote(server.url).reply(request("Hello robot"), send)
    assert spoken([item async for item in receive]) == SENTENCES[:1]  # what was heard before it died


async def test_recorded_server_that_goes_silent_times_out(
    server: FakeAvatarServer, clock: trio.testing.MockClock
) -> None:
    from appliance.errors import ProviderTimeout

    server.fault = "silent"
    with pytest.raises(ProviderTimeout):
        await collect(remote(server.url, reply_timeout=3.0, frame_timeout=3.0), request("Hello robot"))
