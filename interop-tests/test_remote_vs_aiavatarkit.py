"""(a) Our RemoteBrain against the real AIAvatarKit 0.9.2 ``AIAvatarWebSocketServer`` (STT, LLM and TTS on the
fake cloud): spoken and text turns with faces, PCM mode, a user barge-in, the server killed between turns and
mid-reply, failback after its restart. Real time: the server is another process."""

from __future__ import annotations

import math

import trio
from peer import PeerServer, peer_server

from appliance.audio.base import AudioStream
from appliance.audio.playback import MemorySink
from appliance.brains.failover import FailoverBrain
from appliance.brains.remote import RemoteBrain, RemoteCanceled
from appliance.bus import EventBus
from appliance.conversation.history import ConversationHistory
from appliance.conversation.service import ConversationService
from appliance.events import FaceRequested, TurnFinished
from appliance.settings.brains import FailoverConfig
from appliance.turns import BrainOutput, ReplyChunk, Utterance
from conftest import REPLY, SENTENCES
from tests.fakes.cloud import FakeCloud
from tests.remote_helpers import StubBrain, collect, heard, remote, request, speech, spoken

CONFIG = FailoverConfig(failure_threshold=2, open_initial=1, open_max=4, first_audio_timeout=20, probe_timeout=2)
TIMING = {
    "reply_timeout": 20.0,
    "frame_timeout": 20.0,
    "ack_timeout": 5.0,
    "heartbeat_interval": 0.5,
    "heartbeat_timeout": 5.0,
    "reconnect_initial_delay": 0.2,
    "reconnect_max_delay": 1.0,
    "connect_timeout": 5.0,
}


def brain_for(peer: PeerServer) -> RemoteBrain:
    return RemoteBrain(remote(peer.url, api_key="secret-key", **TIMING).config)


def tags(items: list[BrainOutput]) -> set[tuple[str, str]]:
    return {(t.name, t.value) for i in items if isinstance(i, ReplyChunk) for t in i.tags}


async def test_text_and_spoken_turns_with_faces(cloud: FakeCloud, nursery: trio.Nursery) -> None:
    async with peer_server(cloud.url) as peer:
        brain = brain_for(peer)
        await nursery.start(brain.run)
        items = await collect(brain, request("Hello robot", turn="t1"))
        assert heard(items) == ["Hello robot"] and spoken(items) == SENTENCES
        assert {("face", "joy"), ("animation", "wave")} <= tags(items)
        assert all(i.audio is not None for i in items if isinstance(i, ReplyChunk) and i.voice_text)
        items = await collect(brain, request(None, audio=speech(1.0), turn="t2"))
        assert heard(items) == ["What time is it?"] and spoken(items) == SENTENCES
        assert brain.connects == 1


async def test_pcm_mode(cloud: FakeCloud, nursery: trio.Nursery) -> None:
    async with peer_server(cloud.url, pcm=9600) as peer:
        items = await collect(brain_for(peer), request("Hello robot"))
        chunks = [i for i in items if isinstance(i, ReplyChunk) and i.voice_text]
        assert [c.voice_text for c in chunks] == SENTENCES
        assert all(isinstance(c.audio, AudioStream) for c in chunks)
        clips = [await c.audio.read_all() for c in chunks]
        # the fake cloud speaks 4 ms a character of the sentence, at 24 kHz
        assert [len(c.samples) for c in clips] == [int(max(0.05, len(s) * 0.004) * 24_000) for s in SENTENCES]


async def test_stt_failure_goes_to_the_next_brain(cloud: FakeCloud) -> None:
    cloud.transcript = ""
    async with peer_server(cloud.url) as peer:
        try:
            await collect(brain_for(peer), request(None, audio=speech(1.0)))
            raise AssertionError("expected RemoteCanceled")
        except RemoteCanceled:
            pass
        backup = StubBrain("cloud", ("backup answer.",), transcript=False)
        items = await collect(FailoverBrain([brain_for(peer), backup], CONFIG), request(None, audio=speech(1.0)))
        assert spoken(items) == ["backup answer."] and backup.requests[0].utterance.audio is not None


async def test_user_barge_in_then_next_turn(cloud: FakeCloud, nursery: trio.Nursery) -> None:
    cloud.llm.token_delay = 0.05  # a reply that takes a while
    async with peer_server(cloud.url) as peer:
        brain = brain_for(peer)
        await nursery.start(brain.run)
        send, receive = trio.open_memory_channel[BrainOutput](math.inf)
        first: list[str] = []
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                inner.start_soon(brain.reply, request("Tell me a long story", turn="t1"), send)
                async for item in receive:
                    if isinstance(item, ReplyChunk) and item.voice_text:
                        first.append(item.voice_text)
                        scope.cancel()  # the user spoke over the robot
        assert first == SENTENCES[:1]
        items = await collect(brain, request("A new question", turn="t2"))
        assert heard(items) == ["A new question"] and spoken(items) == SENTENCES


async def _turn_through_service(
    brain: FailoverBrain, text: str, history: ConversationHistory, bus: EventBus
) -> tuple[TurnFinished, list[str], MemorySink]:
    sink = MemorySink(realtime=False)
    send, receive = trio.open_memory_channel[Utterance](1)
    service = ConversationService(bus, brain, sink, receive, history)
    with bus.subscribe(TurnFinished, name="test") as sub, bus.subscribe(FaceRequested, name="faces") as faces:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await send.send(Utterance(text=text))
            finished = await sub.receive.receive()
            nursery.cancel_scope.cancel()
        shown = []
        while True:
            try:
                shown.append(faces.receive.receive_nowait().name)
            except trio.WouldBlock:
                break
    return finished, shown, sink


async def test_preferred_brain_answers_every_turn_with_speech_and_faces(
    cloud: FakeCloud, nursery: trio.Nursery
) -> None:
    async with peer_server(cloud.url) as peer:
        backup = StubBrain("cloud", ("backup answer.",))
        bus = EventBus()
        brain = FailoverBrain([brain_for(peer), backup], CONFIG, bus=bus)
        await nursery.start(brain.run)
        history = ConversationHistory()
        for text in ("Hello", "How are you?", "Bye"):
            finished, faces, sink = await _turn_through_service(brain, text, history, bus)
            assert finished.outcome == "done", finished
            assert finished.spoken == REPLY  # single spaces, although AIAvatarKit's sentence text ends in one
            assert faces == ["joy"] and sink.audio.duration > 0.15  # all three sentences (about 0.2 s of tone)
        assert backup.requests == []


async def test_killed_between_turns_then_failback_after_restart(cloud: FakeCloud, nursery: trio.Nursery) -> None:
    peer = PeerServer(cloud.url)
    async with trio.open_nursery() as servers:
        await peer.start(servers)
        backup = StubBrain("cloud", ("backup answer.",), transcript=False)
        remote_brain = brain_for(peer)
        brain = FailoverBrain([remote_brain, backup], CONFIG)
        await nursery.start(brain.run)
        assert spoken(await collect(brain, request("one", turn="a"))) == SENTENCES
        peer.kill()
        await peer.wait_dead()
        items = await collect(brain, request("two", turn="b"))
        assert spoken(items) == ["backup answer."] and backup.requests[0].utterance.text == "two"
        await peer.start(servers)  # the same port again
        with trio.fail_after(60):
            while not (remote_brain.connected and brain.members[0].breaker.healthy):
                await trio.sleep(0.2)
        items = await collect(brain, request("three", turn="c"))
        assert spoken(items) == SENTENCES and len(backup.requests) == 1
        peer.kill()
        servers.cancel_scope.cancel()


async def test_killed_mid_turn_hands_the_same_utterance_to_the_next_brain(
    cloud: FakeCloud, nursery: trio.Nursery
) -> None:
    cloud.llm.latency = 30  # the server is thinking when it dies
    async with peer_server(cloud.url) as peer:
        backup = StubBrain("cloud", ("backup answer.",), transcript=False)
        brain = FailoverBrain([brain_for(peer), backup], CONFIG)
        await nursery.start(brain.run)
        send, receive = trio.open_memory_channel[BrainOutput](math.inf)

        async def kill_when_thinking() -> None:
            while "/v1/chat/completions" not in cloud.paths():
                await trio.sleep(0.05)
            peer.kill()

        async with trio.open_nursery() as inner:
            inner.start_soon(kill_when_thinking)
            await brain.reply(request("Are you still there?"), send)
        items = [item async for item in receive]
        assert spoken(items) == ["backup answer."]
        assert [r.utterance.text for r in backup.requests] == ["Are you still there?"]


async def test_killed_mid_reply_after_speech_ends_the_turn_cleanly(cloud: FakeCloud, nursery: trio.Nursery) -> None:
    cloud.llm.token_delay = 0.1
    async with peer_server(cloud.url) as peer:
        backup = StubBrain("cloud", ("backup answer.",), transcript=False)
        bus = EventBus()
        brain = FailoverBrain([brain_for(peer), backup], CONFIG, bus=bus)
        await nursery.start(brain.run)
        history = ConversationHistory()

        async def kill_after_first_sentence() -> None:
            while len([p for p in cloud.paths() if p == "/v1/audio/speech"]) < 1:
                await trio.sleep(0.02)
            await trio.sleep(0.2)
            peer.kill()

        async with trio.open_nursery() as inner:
            inner.start_soon(kill_after_first_sentence)
            finished, _, _ = await _turn_through_service(brain, "long story please", history, bus)
        assert finished.outcome == "done"
        assert finished.spoken.startswith("[face:joy] Nice to meet you.")
        assert finished.spoken.endswith(CONFIG.mid_reply_message)
        items = await collect(brain, request("and now?"))
        assert spoken(items) == ["backup answer."]  # the next turn goes to the next brain


async def test_streamed_mic_endpointed_by_its_vad(cloud: FakeCloud, nursery: trio.Nursery) -> None:
    async with peer_server(cloud.url) as peer:
        config = remote(peer.url, api_key="secret-key", input="stream", stream_tail=1.0, **TIMING).config
        brain = RemoteBrain(config)
        await nursery.start(brain.run)
        items = await collect(brain, request(None, audio=speech(1.0)))
        assert heard(items) == ["What time is it?"] and spoken(items) == SENTENCES
