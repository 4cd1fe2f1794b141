"""The appliance's state, derived from events alone.

One pure transition function (easy to test) and one small service that applies it to the bus and
publishes ``StateChanged``. Nobody sets the state directly, so there is exactly one writer.
"""

from __future__ import annotations

import logging

import trio

from appliance.bus import EventBus
from appliance.events import (
    Event,
    ListenRequested,
    MuteRequested,
    SentenceStarted,
    SpeechDiscarded,
    SpeechStarted,
    State,
    StateChanged,
    TurnFinished,
    TurnStarted,
    UtteranceCaptured,
)

log = logging.getLogger(__name__)

_BUSY = (State.THINKING, State.SPEAKING)
_INPUTS = (
    MuteRequested,
    SpeechStarted,
    ListenRequested,
    SpeechDiscarded,
    UtteranceCaptured,
    TurnStarted,
    SentenceStarted,
    TurnFinished,
)


class StateMachine:
    def __init__(self) -> None:
        self.state = State.IDLE
        self.turn_id: str | None = None

    def next_state(self, event: Event) -> State | None:
        """The state ``event`` leads to, or None when it changes nothing."""
        state = self.state
        if isinstance(event, MuteRequested):
            if event.muted and state is not State.MUTED:
                return State.MUTED
            if not event.muted and state is State.MUTED:
                return State.IDLE
            return None
        if state is State.MUTED:
            return None
        if isinstance(event, SpeechStarted | ListenRequested):
            return State.LISTENING if state is not State.LISTENING else None
        if isinstance(event, SpeechDiscarded):
            return State.IDLE if state is State.LISTENING else None
        if isinstance(event, UtteranceCaptured | TurnStarted):
            return State.THINKING if state is not State.THINKING else None
        if isinstance(event, SentenceStarted):
            if event.turn_id == self.turn_id and state is not State.SPEAKING:
                return State.SPEAKING
            return None
        if isinstance(event, TurnFinished):
            if event.turn_id != self.turn_id or state not in _BUSY:
                return None
            return State.ERROR if event.outcome == "failed" else State.IDLE
        return None

    def apply(self, event: Event) -> State | None:
        if isinstance(event, TurnStarted):
            self.turn_id = event.turn_id
        new = self.next_state(event)
        if new is not None:
            self.state = new
        return new


class StateService:
    """Keeps the machine in step with the bus; returns from ERROR to IDLE after ``error_display`` s."""

    name = "state"

    def __init__(self, bus: EventBus, error_display: float = 2.0) -> None:
        self.bus = bus
        self.machine = StateMachine()
        self.error_display = error_display

    @property
    def state(self) -> State:
        return self.machine.state

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.bus.subscribe(*_INPUTS, name=self.name, size=1024) as events:
            task_status.started()
            leave_error_at = float("inf")
            while True:
                event = None
                with trio.move_on_at(leave_error_at):
                    event = await events.receive.receive()
                if event is None:
                    leave_error_at = float("inf")
                    self._change(State.IDLE, "error shown")
                    continue
                old = self.state
                new = self.machine.apply(event)
                if new is None:
                    continue
                self.bus.publish(StateChanged(old, new, reason=type(event).__name__))
                log.debug("state %s -> %s (%s)", old.value, new.value, type(event).__name__)
                leave_error_at = trio.current_time() + self.error_display if new is State.ERROR else float("inf")

    def _change(self, new: State, reason: str) -> None:
        old = self.machine.state
        self.machine.state = new
        self.bus.publish(StateChanged(old, new, reason=reason))
