"""Bus, state machine, history, supervisor: the pieces everything else stands on."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from appliance.bus import EventBus
from appliance.conversation.history import ConversationHistory
from appliance.events import (
    InputLevel,
    MuteRequested,
    SentenceStarted,
    ServiceStatus,
    SpeechDiscarded,
    SpeechStarted,
    State,
    StateChanged,
    TurnFinished,
    TurnStarted,
    UtteranceCaptured,
)
from appliance.settings.system import SupervisorConfig
from appliance.state import StateMachine, StateService
from appliance.supervisor import Supervisor, SupervisorGaveUp
from appliance.systemd import Notifier


def walk(machine: StateMachine, *events: object) -> list[State]:
    seen = []
    for event in events:
        new = machine.apply(event)  # type: ignore[arg-type]
        if new is not None:
            seen.append(new)
    return seen


def test_a_turn_walks_the_states() -> None:
    m = StateMachine()
    states = walk(
        m,
        SpeechStarted(),
        UtteranceCaptured(1.0),
        TurnStarted("t1", "cloud"),
        SentenceStarted("t1", 0, "hi"),
        SentenceStarted("t1", 1, "there"),
        TurnFinished("t1", "done"),
    )
    assert states == [State.LISTENING, State.THINKING, State.SPEAKING, State.IDLE]


def test_a_stale_turn_cannot_move_the_state() -> None:
    m = StateMachine()
    walk(m, TurnStarted("old", "cloud"), SentenceStarted("old", 0, "x"), TurnStarted("new", "cloud"))
    assert m.state is State.THINKING
    assert walk(m, TurnFinished("old", "interrupted"), SentenceStarted("old", 1, "y")) == []
    assert walk(m, TurnFinished("new", "failed")) == [State.ERROR]


def test_barge_in_goes_to_listening_and_the_cancelled_turn_does_not_undo_it() -> None:
    m = StateMachine()
    walk(m, TurnStarted("t", "cloud"), SentenceStarted("t", 0, "x"))
    assert walk(m, SpeechStarted(barge_in=True), TurnFinished("t", "interrupted")) == [State.LISTENING]
    assert walk(m, SpeechDiscarded("too short")) == [State.IDLE]


def test_mute_wins_over_everything_until_unmuted() -> None:
    m = StateMachine()
    assert walk(m, MuteRequested(True), SpeechStarted(), TurnStarted("t", "x")) == [State.MUTED]
    assert walk(m, MuteRequested(False)) == [State.IDLE]


async def test_error_state_returns_to_idle_after_its_time(autojump_clock: trio.testing.MockClock) -> None:
    bus = EventBus()
    service = StateService(bus, error_display=2.0)

    async def chatter() -> None:
        while True:  # level events must not keep the error on screen
            bus.publish(InputLevel(-50))
            await trio.sleep(0.2)

    with bus.subscribe(StateChanged) as changes:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            nursery.start_soon(chatter)
            bus.publish(TurnStarted("t", "cloud"))
            bus.publish(TurnFinished("t", "failed"))
            start = trio.current_time()
            seen = []
            while len(seen) < 3:
                event = await changes.receive.receive()
                seen.append((event.new, trio.current_time() - start))  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()
    assert [state for state, _ in seen] == [State.THINKING, State.ERROR, State.IDLE]
    assert seen[2][1] == pytest.approx(2.0, abs=0.01)


async def test_bus_drops_display_events_for_slow_subscribers_but_reports_kept_ones() -> None:
    bus = EventBus()
    with bus.subscribe(name="slow", size=2) as sub:
        for i in range(5):
            bus.publish(InputLevel(float(i)))
        assert sub.dropped == 3
        assert [e.db for e in [sub.receive.receive_nowait(), sub.receive.receive_nowait()]] == [0.0, 1.0]  # type: ignore[attr-defined]
    with bus.subscribe(StateChanged, name="typed") as typed:
        bus.publish(InputLevel(1.0))
        bus.publish(StateChanged(State.IDLE, State.LISTENING))
        assert isinstance(typed.receive.receive_nowait(), StateChanged)
    assert bus.latest(StateChanged) is not None


def test_history_forgets_after_idle_and_keeps_its_limit() -> None:
    now = [0.0]
    history = ConversationHistory(limit=4, idle_timeout=60, clock=lambda: now[0])
    first_id = history.conversation_id
    for i in range(3):
        history.add_turn(f"q{i}", f"a{i}")
    assert [m.content for m in history.messages()] == ["q1", "a1", "q2", "a2"]
    now[0] = 59
    assert len(history.messages()) == 4
    now[0] = 121
    assert history.messages() == ()
    assert history.conversation_id != first_id


def test_history_never_starts_with_a_reply() -> None:
    history = ConversationHistory(limit=3, idle_timeout=60, clock=lambda: 0.0)
    history.add_turn("q0", "a0")
    history.add_turn("q1", "a1")
    assert [m.role for m in history.messages()] == ["user", "assistant"]


class Flaky:
    def __init__(self, name: str, failures: int) -> None:
        self.name = name
        self.failures = failures
        self.starts = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts += 1
        task_status.started()
        await trio.sleep(1)
        if self.starts <= self.failures:
            raise RuntimeError(f"crash {self.starts}")
        await trio.sleep_forever()


async def test_a_crashing_subsystem_is_restarted_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    bus = EventBus()
    notifier = Notifier({})
    supervisor = Supervisor(bus, SupervisorConfig(restart_initial_delay=0.5, max_failures=5), notifier, False)
    flaky, steady = Flaky("flaky", failures=3), Flaky("steady", failures=0)
    supervisor.add(flaky)
    supervisor.add(steady)
    with bus.subscribe(ServiceStatus) as statuses:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            assert notifier.sent == ["READY=1"]
            await trio.sleep(30)
            nursery.cancel_scope.cancel()
        restarts = [e.at for e in _drain(statuses) if e.service == "flaky" and e.status == "restarting"]
    assert flaky.starts == 4 and steady.starts == 1
    assert supervisor.records["flaky"].restarts == 3
    assert supervisor.records["flaky"].status == "running"
    # Each run lasts 1 s; the delays double (0.5, 1, 2): crashes at 1, 2.5 and 4.5 s.
    assert [round(t - restarts[0], 2) for t in restarts] == [0.0, 1.5, 3.5]


async def test_the_start_up_heap_is_frozen_once_every_subsystem_has_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A full garbage collection walked the whole start-up heap (a 50-60 ms pause under a turn): once every
    subsystem is up, before READY, that heap is frozen and later full collections skip it."""
    import gc

    gc.unfreeze()
    notifier = Notifier({})
    supervisor = Supervisor(EventBus(), SupervisorConfig(), notifier, False)
    supervisor.add(Flaky("audio", failures=0))
    try:
        assert gc.get_freeze_count() == 0
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            frozen = gc.get_freeze_count()
            assert notifier.sent == ["READY=1"]
            nursery.cancel_scope.cancel()
    finally:
        gc.unfreeze()
    assert frozen > 10_000  # modules, pydantic's schemas, this test run


async def test_a_required_subsystem_that_keeps_failing_ends_the_process(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor(EventBus(), SupervisorConfig(max_failures=3), Notifier({}), False)
    supervisor.add(Flaky("broken", failures=100))
    with pytest.raises(BaseExceptionGroup) as caught:
        await supervisor.run()
    assert caught.group_contains(SupervisorGaveUp)


async def test_an_optional_subsystem_that_cannot_start_does_not_hold_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Broken:
        name = "display"

        async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            raise OSError("no display")

    notifier = Notifier({})
    supervisor = Supervisor(EventBus(), SupervisorConfig(max_failures=2), notifier, False)
    supervisor.add(Broken(), required=False)
    supervisor.add(Flaky("audio", failures=0))
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        assert notifier.sent == ["READY=1"]
        await trio.sleep(100)
        assert supervisor.records["display"].restarts > 2  # still retried, never fatal
        nursery.cancel_scope.cancel()


def _drain(sub):  # type: ignore[no-untyped-def]
    out = []
    while True:
        try:
            out.append(sub.receive.receive_nowait())
        except trio.WouldBlock:
            return out


def test_announcements_are_the_robots_words_and_models_still_see_the_user_first() -> None:
    history = ConversationHistory(limit=10, idle_timeout=60, clock=lambda: 0.0)
    history.add_turn(None, "Good morning!")  # said on its own, before anyone spoke
    assert history.messages() == ()
    history.add_turn("hello", "Hi there.")
    history.add_turn(None, "The oven is ready.")
    assert [(m.role, m.content) for m in history.messages()] == [
        ("user", "hello"),
        ("assistant", "Hi there. The oven is ready."),
    ]
