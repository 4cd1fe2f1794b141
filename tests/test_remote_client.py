"""RemoteBrain against the strict fake AIAvatarKit server: replies, quirks, PCM mode, streaming, and faults."""

from __future__ import annotations

import math

import pytest
import trio

from appliance.audio.base import AudioStream
from appliance.brains.remote import RemoteBrain, RemoteCanceled
from appliance.errors import ProviderBadReply, ProviderRejected, ProviderTimeout, ProviderUnavailable
from appliance.turns import ReplyChunk, Transcript
from tests.fakes.aiavatar import FakeAvatarServer
from tests.fakes.tcp import FailingResolver, FreezableProxy, refused_port
from tests.remote_helpers import collect, heard, loopback_clock, remote, request, speech, spoken


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return loopback_clock()


@pytest.fixture
async def server(nursery: trio.Nursery) -> FakeAvatarServer:
    fake = FakeAvatarServer()
    await nursery.start(fake.run)
    return fake


async def test_text_reply_with_faces_and_quirks(server: FakeAvatarServer) -> None:
    items = await collect(remote(server.url), request("hello robot"))
    assert isinstance(items[0], Transcript) and items[0].text == "hello robot"  # although `start` was missing
    chunks = [i for i in items if isinstance(i, ReplyChunk)]
    assert [c.voice_text for c in chunks] == ["You said: hello robot.", "That is turn 1."]
    assert chunks[0].text == "[face:joy] You said: hello robot."
    face = chunks[0].tags[0]
    assert (face.name, face.value, face.attribute("duration")) == ("face", "joy", "4")
    assert len(chunks[0].tags) == 1  # avatar_control_request and control_tags name the same face once
    assert all(c.audio is not None and c.audio.duration > 0 for c in chunks)
    assert server.violations == []


async def test_audio_utterance_is_sent_as_16k_pcm(server: FakeAvatarServer) -> None:
    clip = speech(0.5, rate=48_000)
    items = await collect(remote(server.url), request(None, audio=clip))
    assert heard(items) == ["spoken words of 500 ms"]
    assert len(server.requests[0]["audio"]) == 16_000  # 0.5 s at 16 kHz, 2 bytes a sample
    assert server.violations == []


async def test_pcm_mode_reassembles_sentences(nursery: trio.Nursery) -> None:
    fake = FakeAvatarServer(pcm=True, speech_seconds=0.5)
    await nursery.start(fake.run)
    items = await collect(remote(fake.url), request("hi"))
    chunks = [i for i in items if isinstance(i, ReplyChunk)]
    assert [c.voice_text for c in chunks] == ["You said: hi.", "That is turn 1."]
    assert all(isinstance(c.audio, AudioStream) for c in chunks)  # playable while it arrives
    clips = [await c.audio.read_all() for c in chunks]
    assert [len(c.samples) for c in clips] == [12_000, 12_000] and clips[0].sample_rate == 24_000
    assert fake.violations == []


async def test_context_carries_over_between_turns(server: FakeAvatarServer) -> None:
    brain = remote(server.url)
    await collect(brain, request("one", turn="a"))
    items = await collect(brain, request("two", turn="b"))
    assert spoken(items)[-1] == "That is turn 2."
    invokes = [f for f in server.frames if f["type"] == "invoke"]
    assert invokes[0]["context_id"] is None and invokes[1]["context_id"]
    assert server.violations == []


async def test_history_is_offered_to_a_server_new_to_the_conversation(server: FakeAvatarServer) -> None:
    from appliance.turns import Message

    history = (Message("user", "earlier"), Message("assistant", "yes"))
    await collect(remote(server.url), request("now", history=history))
    assert server.requests[0]["metadata"]["history"][0] == {"role": "user", "content": "earlier"}


async def test_stream_input_lets_the_server_vad_end_the_utterance(server: FakeAvatarServer) -> None:
    items = await collect(remote(server.url, input="stream"), request(None, audio=speech(0.4)))
    assert heard(items) == ["spoken words of 400 ms"] or heard(items)[0].startswith("spoken words")
    assert server.requests[0].get("streamed") is True
    assert any(f["type"] == "data" for f in server.frames)
    assert spoken(items)[0].startswith("You said: spoken words")
    assert server.violations == []


async def test_bad_key_is_rejected(server: FakeAvatarServer) -> None:
    with pytest.raises(ProviderRejected, match="403"):
        await collect(remote(server.url, api_key="wrong"), request())
    assert server.refused == 1


async def test_connect_refused() -> None:
    with pytest.raises(ProviderUnavailable, match="cannot connect"):
        await collect(remote(f"ws://127.0.0.1:{refused_port()}/ws"), request())


async def test_dns_failure() -> None:
    resolver = FailingResolver()
    trio.socket.set_custom_hostname_resolver(resolver)
    try:
        with pytest.raises(ProviderUnavailable, match="cannot connect"):
            await collect(remote("ws://robot-pc.lan:8000/ws"), request())
    finally:
        trio.socket.set_custom_hostname_resolver(None)
    assert resolver.lookups == ["robot-pc.lan"]


async def test_server_closing_mid_reply(server: FakeAvatarServer) -> None:
    server.fault = "close_mid_reply"
    send, receive = trio.open_memory_channel(math.inf)
    with pytest.raises(ProviderUnavailable, match="closed"):
        await remote(server.url).reply(request(), send)
    got = [i async for i in receive]
    assert spoken(got) == ["You said: hello robot."]


@pytest.mark.parametrize("fault", ["malformed", "binary"])
async def test_malformed_frames(server: FakeAvatarServer, fault: str) -> None:
    server.fault = fault
    with pytest.raises(ProviderBadReply):
        await collect(remote(server.url), request())


async def test_unknown_frame_types_are_ignored(server: FakeAvatarServer) -> None:
    server.fault = "unknown_types"
    items = await collect(remote(server.url), request())
    assert spoken(items) == ["You said: hello robot.", "That is turn 1."]


async def test_server_error_frame(server: FakeAvatarServer) -> None:
    server.fault = "error"
    with pytest.raises(ProviderUnavailable, match="LLM backend unavailable"):
        await collect(remote(server.url), request())


async def test_canceled_when_server_stt_fails(server: FakeAvatarServer) -> None:
    from appliance.audio.base import AudioClip

    with pytest.raises(RemoteCanceled):
        await collect(remote(server.url), request(None, audio=AudioClip.silence(0.3)))


async def test_silent_server_times_out(server: FakeAvatarServer, clock: trio.testing.MockClock) -> None:
    server.fault = "silent"
    start = trio.current_time()
    with pytest.raises(ProviderTimeout):
        await collect(remote(server.url, frame_timeout=3.0), request())
    assert trio.current_time() - start >= 3.0  # pongs kept coming: only the reply timeout could end it


async def test_frozen_server_during_a_turn(
    server: FakeAvatarServer, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    proxy = FreezableProxy(server.port)
    port = await nursery.start(proxy.run)
    server.chunk_delay = 30.0  # the server would take long anyway; only the heartbeat can tell it froze
    brain = remote(f"ws://127.0.0.1:{port}/ws", reply_timeout=60, frame_timeout=60)

    async def freeze_soon() -> None:
        await trio.sleep(0.5)
        proxy.freeze()

    nursery.start_soon(freeze_soon)
    start = trio.current_time()
    with pytest.raises(ProviderTimeout, match="frozen"):
        await collect(brain, request())
    assert trio.current_time() - start < 10  # heartbeat (1 s + 1 s), not the 60 s reply timeout


async def test_managed_link_detects_freeze_and_reconnects(
    server: FakeAvatarServer, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    proxy = FreezableProxy(server.port)
    port = await nursery.start(proxy.run)
    brain = remote(f"ws://127.0.0.1:{port}/ws")
    await nursery.start(brain.run)
    items = await collect(brain, request("first"))
    assert spoken(items)[0] == "You said: first."
    proxy.freeze()
    with trio.fail_after(10):
        while brain.last_error is None:
            await trio.sleep(0.1)
    assert not brain.connected
    assert isinstance(brain.last_error, ProviderTimeout)
    with pytest.raises(ProviderTimeout):
        await collect(brain, request("while frozen"))  # fails at once: no waiting on a dead link
    proxy.thaw()
    with trio.fail_after(60):
        while not brain.connected:
            await trio.sleep(0.1)
    items = await collect(brain, request("again", turn="t2"))
    assert spoken(items)[0] == "You said: again."
    assert brain.connects >= 2


async def test_reconnect_backs_off_while_server_is_down(nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    proxy = FreezableProxy(refused_port())  # the server behind it is down: every connection is dropped
    port = await nursery.start(proxy.run)
    brain = remote(f"ws://127.0.0.1:{port}/ws", reconnect_initial_delay=0.5, reconnect_max_delay=4.0)
    await nursery.start(brain.run)
    await trio.sleep(20)
    # attempts at about 0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5: backoff doubles up to 4 s, no hammering
    assert 5 <= proxy.connections <= 10
    assert not brain.connected
    server = FakeAvatarServer()
    proxy.target_port = await nursery.start(server.run)
    with trio.fail_after(10):
        while not brain.connected:
            await trio.sleep(0.1)
    items = await collect(brain, request("back"))
    assert spoken(items)[0] == "You said: back."


async def test_stale_frames_of_an_interrupted_turn_are_dropped(
    server: FakeAvatarServer, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    server.chunk_delay = 1.0
    brain = remote(server.url)
    await nursery.start(brain.run)
    send, receive = trio.open_memory_channel(0)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            inner.start_soon(brain.reply, request("first", turn="a"), send)
            async with receive:
                async for item in receive:
                    if isinstance(item, ReplyChunk):
                        scope.cancel()  # barge-in after the first sentence
    items = await collect(brain, request("second", turn="b"))
    assert spoken(items) == ["You said: second.", "That is turn 1."]  # not ended early by the double final
    finals = [f for f in server.frames if f["type"] == "invoke"]
    assert len(finals) == 2
    assert server.violations == []


async def test_probe_alone_and_managed(server: FakeAvatarServer, nursery: trio.Nursery) -> None:
    brain = remote(server.url)
    await brain.probe()
    bad = remote(f"ws://127.0.0.1:{refused_port()}/ws")
    with pytest.raises(ProviderUnavailable):
        await bad.probe()
    await nursery.start(brain.run)
    with trio.fail_after(5):
        while not brain.connected:
            await trio.sleep(0.01)
    await brain.probe()


def test_rejects_non_websocket_url() -> None:
    from pydantic import ValidationError

    from appliance.settings.brains import RemoteConfig

    with pytest.raises(ValidationError, match="ws://"):
        RemoteConfig(url="http://pc:8000/ws")
    assert isinstance(RemoteBrain(RemoteConfig()), RemoteBrain)


async def test_freeze_just_before_a_turn_is_caught_by_the_request_ping(
    server: FakeAvatarServer, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    proxy = FreezableProxy(server.port)
    port = await nursery.start(proxy.run)
    brain = remote(f"ws://127.0.0.1:{port}/ws", heartbeat_interval=30, ack_timeout=0.5, reply_timeout=60)
    await nursery.start(brain.run)
    with trio.fail_after(5):
        while not brain.connected:
            await trio.sleep(0.01)
    proxy.freeze()
    start = trio.current_time()
    with pytest.raises(ProviderTimeout, match="of the request"):
        await collect(brain, request())
    assert trio.current_time() - start == pytest.approx(0.5)  # not the 30 s heartbeat, not the 60 s reply wait


async def test_flapping_server_is_not_hammered(
    server: FakeAvatarServer, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    server.fault = "drop_on_start"
    brain = remote(server.url, reconnect_initial_delay=0.5, reconnect_max_delay=4.0)
    await nursery.start(brain.run)
    await trio.sleep(20)
    # each connection lives for a moment only, so the backoff keeps growing instead of starting over
    assert 5 <= server.connections <= 10
    assert isinstance(brain.last_error, ProviderUnavailable)


async def test_server_stop_ends_the_reply_and_asks_to_cancel_playback(server: FakeAvatarServer) -> None:
    from appliance.bus import EventBus
    from appliance.events import CancelTurnRequested

    server.fault = "stop"
    bus = EventBus()
    brain = RemoteBrain(remote(server.url).config, bus=bus)
    with bus.subscribe(CancelTurnRequested, name="test") as sub:
        items = await collect(brain, request())
        cancel = sub.receive.receive_nowait()
    assert spoken(items) == ["You said: hello robot."]
    assert cancel.source == "remote"


async def test_pcm_sentence_is_handed_out_with_its_first_audio_and_cut_streams_end(
    server: FakeAvatarServer, nursery: trio.Nursery
) -> None:
    """In PCM mode a sentence plays while its frames arrive; a connection lost mid-sentence ends the stream
    (what arrived still plays) and the brain reports the failure."""
    server.pcm = True
    server.speech_seconds = 0.5
    server.fault = "close_mid_reply"
    send, receive = trio.open_memory_channel(math.inf)
    with pytest.raises(ProviderUnavailable):
        await remote(server.url).reply(request(), send)
    chunks = [i async for i in receive if isinstance(i, ReplyChunk)]
    assert len(chunks) == 1
    clip = await chunks[0].audio.read_all()
    assert len(clip.samples) == 12_000


def test_pcm_frames_split_across_chunks_and_stereo() -> None:
    import base64

    import numpy as np

    from appliance.brains.remote_frames import ReplyReader as _ReplyReader

    reader = _ReplyReader("remote")
    stereo = np.array([[100, 300], [-100, -300], [50, 50]], dtype="<i2").tobytes()  # 3 frames, 12 bytes
    meta = {
        "pcm_format": {"sample_rate": 16000, "channels": 2, "sample_width": 2},
        "audio_id": "a",
        "audio_frame_count": 3,
    }
    assert reader.chunk({"type": "chunk", "text": "Hi.", "voice_text": "Hi.", "metadata": meta}) == []
    first = reader.chunk(
        {"type": "chunk", "audio_data": base64.b64encode(stereo[:5]).decode(), "metadata": {"audio_id": "a"}}
    )
    assert [c.voice_text for c in first] == ["Hi."]  # handed out with its first audio
    assert (
        reader.chunk(
            {"type": "chunk", "audio_data": base64.b64encode(stereo[5:]).decode(), "metadata": {"audio_id": "a"}}
        )
        == []
    )
    assert reader.pcm is None  # complete: the stream is closed
    pieces = []
    stream = first[0].audio
    while True:
        try:
            pieces.append(stream._pieces.receive_nowait())
        except (trio.EndOfChannel, trio.WouldBlock):
            break
    assert np.concatenate(pieces).tolist() == [200, -200, 50]  # mono mix of whole frames only


async def test_server_that_never_sends_accepted(nursery: trio.Nursery) -> None:
    from tests.fakes.aiavatar import ALL_QUIRKS

    fake = FakeAvatarServer(quirks=ALL_QUIRKS | {"no_accepted"})
    await nursery.start(fake.run)
    brain = remote(fake.url)
    await nursery.start(brain.run)
    with trio.fail_after(5):
        while not brain.connected:
            await trio.sleep(0.01)
    for n in range(3):
        items = await collect(brain, request(f"turn {n}", turn=f"t{n}"))
        assert spoken(items)[0] == f"You said: turn {n}."
    assert brain._link is not None and brain._link.awaiting_accept == []
