"""FailoverBrain with a real RemoteBrain against the strict fake AIAvatarKit server, and through the turn loop.

Each remote fault from the issue: the reply still comes (from the next brain) and the utterance is not lost.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from appliance.audio.playback import MemorySink
from appliance.brains.failover import FailoverBrain
from appliance.brains.offline import OfflineBrain
from appliance.bus import EventBus
from appliance.conversation.history import ConversationHistory
from appliance.conversation.local_voice import LocalVoice
from appliance.conversation.service import ConversationService
from appliance.errors import ProviderUnavailable
from appliance.events import BrainChanged, TurnFinished
from appliance.settings.brains import FailoverConfig
from appliance.turns import Utterance
from tests.fakes.aiavatar import FakeAvatarServer
from tests.fakes.tcp import FreezableProxy, refused_port
from tests.remote_helpers import StubBrain, collect, heard, loopback_clock, remote, request, speech, spoken

CONFIG = FailoverConfig(failure_threshold=2, open_initial=5, open_max=40, first_audio_timeout=8, probe_timeout=2)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return loopback_clock()


@pytest.fixture
async def server(nursery: trio.Nursery) -> FakeAvatarServer:
    fake = FakeAvatarServer()
    await nursery.start(fake.run)
    return fake


async def test_cloud_down_remote_answers_the_same_utterance(server: FakeAvatarServer) -> None:
    cloud = StubBrain("cloud", fail=lambda: ProviderUnavailable("openai-llm", "HTTP 500"), transcript=False)
    brain = FailoverBrain([cloud, remote(server.url)], CONFIG)
    clip = speech(0.5)
    items = await collect(brain, request(None, audio=clip))
    assert heard(items) == ["spoken words of 500 ms"]
    assert spoken(items)[0] == "You said: spoken words of 500 ms."
    assert len(server.requests[0]["audio"]) == 16_000  # the very audio the user spoke reached the remote
    assert server.violations == []


@pytest.mark.parametrize("fault", ["auth", "refused", "malformed", "binary", "error", "canceled"])
async def test_remote_fault_falls_to_next_brain(server: FakeAvatarServer, fault: str) -> None:
    url = server.url
    overrides: dict[str, object] = {}
    if fault == "auth":
        overrides["api_key"] = "revoked"
    elif fault == "refused":
        url = f"ws://127.0.0.1:{refused_port()}/ws"
    elif fault != "canceled":
        server.fault = fault
    backup = StubBrain("offline", ("backup answer.",))
    brain = FailoverBrain([remote(url, **overrides), backup], CONFIG)
    utterance = request("tell me a joke") if fault != "canceled" else request(None, audio=speech(0.3))
    if fault == "canceled":
        server.stt = lambda pcm: None  # the server's speech recognition fails
    items = await collect(brain, utterance)
    assert spoken(items) == ["backup answer."]
    assert backup.requests[0].utterance is utterance.utterance or backup.requests[0].utterance.audio is not None
    assert brain.active == "offline"


async def test_unknown_frame_types_do_not_cause_failover(server: FakeAvatarServer) -> None:
    server.fault = "unknown_types"
    backup = StubBrain("offline")
    items = await collect(FailoverBrain([remote(server.url), backup], CONFIG), request("hi"))
    assert spoken(items)[0] == "You said: hi."
    assert backup.requests == []


async def test_remote_silent_times_out_to_next_brain(server: FakeAvatarServer, clock: trio.testing.MockClock) -> None:
    server.fault = "silent"
    backup = StubBrain("offline", ("backup answer.",))
    brain = FailoverBrain([remote(server.url, reply_timeout=60), backup], CONFIG)
    start = trio.current_time()
    items = await collect(brain, request())
    assert spoken(items) == ["backup answer."]
    assert trio.current_time() - start < 9  # first_audio_timeout (8 s), not the remote's own 60 s


async def test_both_down_offline_brain_answers() -> None:
    cloud = StubBrain("cloud", fail=lambda: ProviderUnavailable("openai-llm", "cannot connect"))
    dead = remote(f"ws://127.0.0.1:{refused_port()}/ws")
    offline = OfflineBrain("I'm offline.", LocalVoice())
    items = await collect(FailoverBrain([cloud, dead, offline], CONFIG), request("are you there"))
    assert heard(items) == ["are you there"] and spoken(items) == ["I'm offline."]


async def test_frozen_remote_is_detected_skipped_and_failed_back(
    server: FakeAvatarServer, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    proxy = FreezableProxy(server.port)
    port = await nursery.start(proxy.run)
    bus = EventBus()
    backup = StubBrain("offline", ("backup answer.",))
    brain = FailoverBrain([remote(f"ws://127.0.0.1:{port}/ws"), backup], CONFIG, bus=bus)
    await nursery.start(brain.run)
    items = await collect(brain, request("one", turn="a"))
    assert spoken(items)[0] == "You said: one."
    proxy.freeze()
    await trio.sleep(3)  # heartbeat 1 s + pong timeout 1 s
    items = await collect(brain, request("two", turn="b"))
    assert spoken(items) == ["backup answer."] and backup.requests[0].utterance.text == "two"
    proxy.thaw()
    with bus.subscribe(BrainChanged, name="test") as sub:
        with trio.fail_after(120):
            while not brain.members[0].breaker.healthy:
                await trio.sleep(0.5)
        items = await collect(brain, request("three", turn="c"))
        assert spoken(items)[0] == "You said: three."
        change = sub.receive.receive_nowait()
    assert (change.brain, change.previous) == ("remote", "offline")


async def _turn_through_service(
    brain: FailoverBrain, text: str, history: ConversationHistory, bus: EventBus
) -> TurnFinished:
    sink = MemorySink(realtime=False)
    send, receive = trio.open_memory_channel[Utterance](1)
    service = ConversationService(bus, brain, sink, receive, history)
    with bus.subscribe(TurnFinished, name="test") as sub:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await send.send(Utterance(text=text))
            finished = await sub.receive.receive()
            nursery.cancel_scope.cancel()
    return finished


async def test_remote_closing_mid_reply_keeps_history_true(server: FakeAvatarServer) -> None:
    server.fault = "close_mid_reply"
    backup = StubBrain("offline")
    brain = FailoverBrain([remote(server.url), backup], CONFIG)
    bus = EventBus()
    history = ConversationHistory()
    finished = await _turn_through_service(brain, "long story please", history, bus)
    assert finished.outcome == "done"
    assert backup.requests == []
    messages = [(m.role, m.content) for m in history.messages()]
    assert messages == [
        ("user", "long story please"),
        ("assistant", "[face:joy] You said: long story please. Sorry, I lost my connection."),
    ]
    server.fault = None
    await _turn_through_service(brain, "and now?", history, bus)
    assert [m.content for m in history.messages()][2:] == ["and now?", "[face:joy] You said: and now?. That is turn 1."]
