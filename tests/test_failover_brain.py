"""FailoverBrain with stand-in brains that fail on cue: every fault class, the circuit breaker, failback."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from appliance.brains.failover import FailoverBrain
from appliance.bus import EventBus
from appliance.errors import (
    ProviderBadReply,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from appliance.events import BrainChanged, BrainHealthChanged
from appliance.settings.brains import FailoverConfig
from appliance.turns import ReplyChunk, Transcript
from tests.remote_helpers import StubBrain, collect, heard, request, speech, spoken

CONFIG = FailoverConfig(
    failure_threshold=2,
    open_initial=10,
    open_max=80,
    first_audio_timeout=5,
    probe_timeout=2,
    mid_reply_message="Sorry, I lost my connection.",
)

# The faults a cloud brain reports, as our error tree carries them (the cloud brain maps HTTP/SDK errors).
CLOUD_FAULTS = {
    "http 500": lambda: ProviderUnavailable("openai-llm", "HTTP 500: internal error"),
    "429 retry-after": lambda: ProviderUnavailable("openai-llm", "HTTP 429: rate limited", retry_after=30),
    "connect refused": lambda: ProviderUnavailable("openai-llm", "cannot connect: Connection refused"),
    "dns failure": lambda: ProviderUnavailable("openai-llm", "cannot connect: Name or service not known"),
    "read timeout": lambda: ProviderTimeout("openai-llm", "timed out"),
    "sse cut": lambda: ProviderBadReply("openai-llm", "stream ended before the reply was complete"),
    "key revoked": lambda: ProviderRejected("openai-llm", "HTTP 401: invalid api key"),
}


@pytest.mark.parametrize("fault", sorted(CLOUD_FAULTS))
async def test_fault_before_speech_goes_to_next_brain(fault: str) -> None:
    cloud = StubBrain("cloud", fail=CLOUD_FAULTS[fault], transcript=False)
    remote = StubBrain("remote", ("remote answer.",))
    brain = FailoverBrain([cloud, remote], CONFIG)
    items = await collect(brain, request("what time is it"))
    assert spoken(items) == ["remote answer."]
    assert remote.requests[0].utterance.text == "what time is it"  # the same utterance, not lost
    assert brain.active == "remote"


async def test_tts_failure_after_llm_answered_keeps_transcript_and_skips_second_stt() -> None:
    clip = speech(0.3)
    # STT worked and the LLM wrote a sentence, then its speech could not be synthesized: nothing was heard yet.
    cloud = StubBrain("cloud", ("one.", "two."), fail=lambda: ProviderUnavailable("openai-tts", "HTTP 503"))
    cloud.transcript = True
    remote = StubBrain("remote", ("remote answer.",))
    items = await collect(FailoverBrain([cloud, remote], CONFIG), request(None, audio=clip))
    assert heard(items) == ["(audio)"]  # once, though both brains produced one
    assert spoken(items) == ["remote answer."]
    passed = remote.requests[0].utterance
    assert passed.text == "(audio)" and passed.audio is clip


async def test_chunks_without_speech_are_held_until_speech() -> None:
    from appliance.turns import BrainOutput, Tag

    class TagsThenFail(StubBrain):
        async def reply(self, req, out: trio.MemorySendChannel[BrainOutput]) -> None:  # type: ignore[no-untyped-def]
            async with out:
                await out.send(ReplyChunk("[face:joy]", "", (Tag("face", "joy"),), None))
                raise ProviderBadReply(self.name, "cut")

    remote = StubBrain("remote", ("remote answer.",))
    items = await collect(FailoverBrain([TagsThenFail("cloud"), remote], CONFIG), request())
    chunks = [i for i in items if isinstance(i, ReplyChunk)]
    assert [c.text for c in chunks] == ["remote: remote answer."]  # the failed brain's face never showed


async def test_hung_brain_is_skipped_after_first_audio_timeout(autojump_clock: trio.testing.MockClock) -> None:
    cloud = StubBrain("cloud", hang=True)
    remote = StubBrain("remote", ("remote answer.",))
    brain = FailoverBrain([cloud, remote], CONFIG)
    start = trio.current_time()
    items = await collect(brain, request())
    assert spoken(items) == ["remote answer."]
    assert trio.current_time() - start == pytest.approx(CONFIG.first_audio_timeout)
    assert not brain.members[0].breaker.healthy  # a timeout opens the circuit at once


async def test_failure_mid_reply_apologises_and_does_not_repeat() -> None:
    cloud = StubBrain(
        "cloud", ("first part.", "second part."), fail=lambda: ProviderBadReply("cloud", "cut"), fail_after=1
    )
    remote = StubBrain("remote")
    items = await collect(FailoverBrain([cloud, remote], CONFIG), request())
    assert spoken(items) == ["first part.", "Sorry, I lost my connection."]
    assert remote.requests == []  # the user already heard half an answer; another brain would start over
    assert items[-1].tags[0].value == "sorrow"


async def test_circuit_opens_after_threshold_then_skips(autojump_clock: trio.testing.MockClock) -> None:
    cloud = StubBrain("cloud", fail=lambda: ProviderUnavailable("cloud", "HTTP 500"))
    remote = StubBrain("remote")
    brain = FailoverBrain([cloud, remote], CONFIG)
    for turn in range(4):
        await collect(brain, request(turn=f"t{turn}"))
    assert len(cloud.requests) == 2  # threshold 2: the third and fourth turns skip it
    assert len(remote.requests) == 4
    assert brain.health == {"cloud": "unhealthy", "remote": "healthy", "active": "remote"}
    assert brain.healthy is False


async def test_half_open_trial_by_a_real_turn_then_failback(autojump_clock: trio.testing.MockClock) -> None:
    bus = EventBus()

    class NoProbe(StubBrain):
        probe = None  # type: ignore[assignment]

    cloud = NoProbe("cloud", fail=lambda: ProviderTimeout("cloud", "timed out"))
    remote = StubBrain("remote")
    brain = FailoverBrain([cloud, remote], CONFIG, bus=bus)
    with bus.subscribe(BrainChanged, BrainHealthChanged, name="test") as sub:
        await collect(brain, request(turn="a"))  # timeout: open for 10 s
        await trio.sleep(5)
        await collect(brain, request(turn="b"))  # still open: skipped
        assert len(cloud.requests) == 1
        await trio.sleep(6)
        await collect(brain, request(turn="c"))  # half-open trial fails: open for 20 s now
        assert len(cloud.requests) == 2 and brain.members[0].breaker.open_for == 20
        cloud.fail = None
        await trio.sleep(21)
        assert brain.name == "cloud"  # what the status shows at the start of the next turn
        items = await collect(brain, request(turn="d"))
        assert spoken(items) == ["fine."] and brain.active == "cloud"
        events = []
        while True:
            try:
                events.append(sub.receive.receive_nowait())
            except trio.WouldBlock:
                break
    changes = [(e.brain, e.previous) for e in events if isinstance(e, BrainChanged)]
    assert changes == [("remote", None), ("cloud", "remote")]
    health = [(e.brain, e.healthy) for e in events if isinstance(e, BrainHealthChanged)]
    assert health == [("cloud", False), ("cloud", True)]


async def test_background_probe_fails_back(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    cloud = StubBrain("cloud", fail=lambda: ProviderUnavailable("cloud", "HTTP 503", retry_after=15))
    cloud.probe_error = lambda: ProviderUnavailable("cloud", "still down")
    remote = StubBrain("remote")
    brain = FailoverBrain([cloud, remote], CONFIG)
    await nursery.start(brain.run)
    await collect(brain, request(turn="a"))
    assert brain.active == "remote" and brain.members[0].breaker.open_for == 15  # Retry-After respected
    await trio.sleep(16)
    # one probe at start (failed: degraded), one when the circuit's 15 s were up (failed: open for 30 s)
    assert cloud.probes == 2 and not brain.members[0].breaker.healthy
    await collect(brain, request(turn="b"))
    assert len(cloud.requests) == 1  # no real turn is spent on a brain being probed
    cloud.probe_error = None
    cloud.fail = None
    await trio.sleep(31)
    assert cloud.probes == 3 and brain.members[0].breaker.healthy
    items = await collect(brain, request(turn="c"))
    assert items and brain.active == "cloud"


async def test_all_down_goes_to_offline() -> None:
    from appliance.brains.offline import OfflineBrain
    from appliance.conversation.local_voice import LocalVoice

    cloud = StubBrain("cloud", fail=lambda: ProviderUnavailable("cloud", "down"))
    remote = StubBrain("remote", fail=lambda: ProviderRejected("remote", "bad key"))
    offline = OfflineBrain("I'm offline.", LocalVoice())
    items = await collect(FailoverBrain([cloud, remote, offline], CONFIG), request("hello"))
    assert heard(items) == ["hello"]
    assert spoken(items) == ["I'm offline."]


async def test_every_brain_failing_raises_the_last_error() -> None:
    a = StubBrain("a", fail=lambda: ProviderUnavailable("a", "down"))
    b = StubBrain("b", fail=lambda: ProviderTimeout("b", "slow"))
    with pytest.raises(ProviderTimeout):
        await collect(FailoverBrain([a, b], CONFIG), request())


async def test_a_crashing_brain_is_a_failure_not_a_crash() -> None:
    class Buggy(StubBrain):
        async def reply(self, req, out):  # type: ignore[no-untyped-def]
            async with out:
                raise KeyError("oops")

    remote = StubBrain("remote")
    items = await collect(FailoverBrain([Buggy("cloud"), remote], CONFIG), request())
    assert spoken(items) == ["fine."]


@pytest.mark.parametrize("hedge_after", [0.0, 0.8])
async def test_interruption_is_not_a_failure(autojump_clock: trio.testing.MockClock, hedge_after: float) -> None:
    cloud = StubBrain("cloud", delay=3)
    brain = FailoverBrain([cloud, StubBrain("remote", delay=3)], CONFIG.model_copy(update={"hedge_after": hedge_after}))
    send, _receive = trio.open_memory_channel(math.inf)
    with trio.move_on_after(1):  # with hedging, both are running when the user interrupts
        await brain.reply(request(), send)
    assert [m.breaker.failures for m in brain.members] == [0, 0]


def test_rejects_bad_lists() -> None:
    with pytest.raises(ValueError, match="at least one"):
        FailoverBrain([], CONFIG)
    with pytest.raises(ValueError, match="differ"):
        FailoverBrain([StubBrain("a"), StubBrain("a")], CONFIG)
    with pytest.raises(ValueError, match="open_max"):
        FailoverConfig(open_initial=10, open_max=5)


async def test_routine_probe_finds_an_outage_before_the_user_speaks(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    config = CONFIG.model_copy(update={"health_interval": 30.0})
    cloud = StubBrain("cloud")
    remote = StubBrain("remote")
    brain = FailoverBrain([cloud, remote], config)
    await nursery.start(brain.run)
    await trio.sleep(31)
    assert cloud.probes == 2 and brain.members[0].breaker.healthy  # the first look at start, the routine one at 30 s
    cloud.probe_error = lambda: ProviderTimeout("cloud", "hung")  # the cloud hangs while nobody talks
    cloud.hang = True
    await trio.sleep(30)
    assert not brain.members[0].breaker.healthy
    start = trio.current_time()
    items = await collect(brain, request())
    assert spoken(items) == ["fine."] and items[-1].text == "remote: fine."
    assert trio.current_time() == start  # no waiting on the hung cloud at all
    assert cloud.requests == []


async def test_without_background_probes_an_open_brain_gets_a_trial_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cloud = StubBrain("cloud", fail=lambda: ProviderTimeout("cloud", "slow"))  # has probe(), but nobody runs it
    brain = FailoverBrain([cloud, StubBrain("remote")], CONFIG)
    await collect(brain, request(turn="a"))
    cloud.fail = None
    await trio.sleep(CONFIG.open_initial + 1)
    items = await collect(brain, request(turn="b"))
    assert items[-1].text == "cloud: fine." and brain.members[0].breaker.healthy


async def test_warm_reaches_the_brains_a_turn_may_try() -> None:
    warmed: list[str] = []

    class Warmable(StubBrain):
        async def warm(self) -> None:
            warmed.append(self.name)
            if self.name == "remote":
                raise ProviderUnavailable("remote", "cannot connect")  # best effort: never fails the caller

    brain = FailoverBrain([Warmable("cloud"), Warmable("remote"), StubBrain("offline")], CONFIG)
    await brain.warm()
    assert sorted(warmed) == ["cloud", "remote"]


# --- hedging: a brain that shows no sign of life is joined by the next one ---------------------------------

HEDGED = FailoverConfig(failure_threshold=2, open_initial=10, first_audio_timeout=8, hedge_after=0.8)


class Paced(StubBrain):
    """Sends its transcript after ``heard_at`` s and its first sentence after ``speaks_at`` s (None: never)."""

    def __init__(self, name: str, heard_at: float | None, speaks_at: float | None) -> None:
        super().__init__(name, (f"{name} answer.",))
        self.heard_at, self.speaks_at = heard_at, speaks_at
        self.cancelled = False

    async def reply(self, req, out) -> None:  # type: ignore[no-untyped-def]
        async with out:
            self.requests.append(req)
            began = trio.current_time()
            try:
                if self.heard_at is not None:
                    await trio.sleep_until(began + self.heard_at)
                    await out.send(Transcript("what time is it"))
                if self.speaks_at is None:
                    await trio.sleep_forever()
                await trio.sleep_until(began + self.speaks_at)
                await out.send(ReplyChunk(f"{self.name} answer.", f"{self.name} answer.", (), speech(0.1)))
            except trio.Cancelled:
                self.cancelled = True
                raise


async def _first_speech_at(brain: FailoverBrain) -> tuple[list, float]:
    send, receive = trio.open_memory_channel(math.inf)
    began = trio.current_time()
    await brain.reply(request(None, audio=speech(0.5)), send)
    items = [item async for item in receive]
    return items, trio.current_time() - began


async def test_a_hung_brain_is_joined_by_the_next_after_hedge_after(autojump_clock: trio.testing.MockClock) -> None:
    cloud = Paced("cloud", heard_at=None, speaks_at=None)  # accepts the request, never answers
    remote = Paced("remote", heard_at=0.3, speaks_at=0.5)
    items, took = await _first_speech_at(FailoverBrain([cloud, remote], HEDGED))
    assert spoken(items) == ["remote answer."]
    assert took == pytest.approx(0.8 + 0.5)  # not the 8 s first-audio timeout
    assert cloud.cancelled and len(remote.requests) == 1


async def test_a_brain_that_heard_in_time_is_not_hedged(autojump_clock: trio.testing.MockClock) -> None:
    cloud = Paced("cloud", heard_at=0.5, speaks_at=3.0)  # slow model, but the transcript came
    remote = Paced("remote", heard_at=0.1, speaks_at=0.2)
    items, took = await _first_speech_at(FailoverBrain([cloud, remote], HEDGED))
    assert spoken(items) == ["cloud answer."] and took == pytest.approx(3.0)
    assert remote.requests == []


async def test_when_both_run_the_first_to_speak_answers_alone(autojump_clock: trio.testing.MockClock) -> None:
    cloud = Paced("cloud", heard_at=None, speaks_at=1.0)  # late, but still sooner than the hedged backup
    remote = Paced("remote", heard_at=0.1, speaks_at=0.6)  # asked at 0.8: hears at 0.9, would speak at 1.4
    items, took = await _first_speech_at(FailoverBrain([cloud, remote], HEDGED))
    assert spoken(items) == ["cloud answer."] and took == pytest.approx(1.0)
    assert remote.cancelled and len(remote.requests) == 1
    assert heard(items) == ["what time is it"]  # the backup's transcript, the only one that came


async def test_the_offline_brain_is_never_raced(autojump_clock: trio.testing.MockClock) -> None:
    cloud = Paced("cloud", heard_at=None, speaks_at=2.0)
    offline = StubBrain("offline", ("I'm offline.",))
    offline.probe = None  # type: ignore[assignment,method-assign]  # no health probe: it does no real work
    items, took = await _first_speech_at(FailoverBrain([cloud, offline], HEDGED))
    assert spoken(items) == ["cloud answer."] and took == pytest.approx(2.0)
    assert offline.requests == []


async def test_hedging_off_waits_for_the_first_audio_timeout(autojump_clock: trio.testing.MockClock) -> None:
    cloud = Paced("cloud", heard_at=None, speaks_at=None)
    remote = Paced("remote", heard_at=0.3, speaks_at=0.5)
    config = HEDGED.model_copy(update={"hedge_after": 0.0})
    items, took = await _first_speech_at(FailoverBrain([cloud, remote], config))
    assert spoken(items) == ["remote answer."] and took == pytest.approx(8.0 + 0.5)


async def test_a_brain_asked_after_a_failure_gets_its_own_hedge_time(autojump_clock: trio.testing.MockClock) -> None:
    cloud = StubBrain("cloud", fail=lambda: ProviderUnavailable("openai-llm", "HTTP 500"), transcript=False, delay=0.7)
    remote = Paced("remote", heard_at=0.5, speaks_at=0.6)  # asked at 0.7: hears at 1.2, after a shared 0.8 s
    third = Paced("third", heard_at=0.0, speaks_at=0.0)
    items, took = await _first_speech_at(FailoverBrain([cloud, remote, third], HEDGED))
    assert spoken(items) == ["remote answer."] and took == pytest.approx(0.7 + 0.6)
    assert third.requests == []


async def test_a_brain_beaten_without_a_word_has_its_circuit_opened(autojump_clock: trio.testing.MockClock) -> None:
    cloud = Paced("cloud", heard_at=None, speaks_at=None)
    remote = Paced("remote", heard_at=0.3, speaks_at=0.5)
    chain = FailoverBrain([cloud, remote], HEDGED)
    await _first_speech_at(chain)
    assert not chain.members[0].breaker.healthy  # the next turns go straight to the backup
    items, took = await _first_speech_at(chain)
    assert spoken(items) == ["remote answer."] and took == pytest.approx(0.5)
    assert len(cloud.requests) == 1


async def test_a_brain_that_heard_but_lost_the_race_stays_healthy(autojump_clock: trio.testing.MockClock) -> None:
    cloud = Paced("cloud", heard_at=1.0, speaks_at=3.0)  # alive, only slower than the hedged backup
    remote = Paced("remote", heard_at=0.1, speaks_at=0.2)
    chain = FailoverBrain([cloud, remote], HEDGED)
    items, _ = await _first_speech_at(chain)
    assert spoken(items) == ["remote answer."]
    assert chain.members[0].breaker.healthy
