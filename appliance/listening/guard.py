"""Self-trigger guard: the robot must not wake up or interrupt itself on its own voice.

The guard knows what the speaker is playing (the ``OutputLevel`` of every block the sink writes) and learns
how loud that arrives at the microphone (the *coupling*: mic level minus output level while the robot
speaks, median over the last seconds). While the robot speaks, and for ``echo_tail`` seconds after (the
room still rings, the device still has audio buffered), a block only counts as the user's voice when it is
``margin_db`` louder than both the normal threshold and the expected echo.

Trade-off: without real echo cancellation the user has to speak clearly louder than the robot's echo to
barge in; turn the speaker down or move it away from the mic to make barge-in easier. With an echo canceller
in front of the microphone (PipeWire's ``module-echo-cancel``, see the README) set ``self_trigger_guard =
"off"``. ``"gate"`` ignores the microphone entirely while the robot speaks (no voice barge-in at all; the
button still works) for rooms where even that is not enough.

With the built-in echo canceller on (``listening.echo_cancel``) the microphone already carries only the
residual echo, and the coupling learned from it is that residual: the margin then drops to
``echo_cancel_margin_db`` (see :func:`guard_margin`) once the canceller has converged, so the user barges in
at a normal voice. Until then the residual can burst back to the whole echo at any moment (AEC3 before its
delay is found, or after the echo path moved), so the guard expects at least the echo as it reaches the
microphone uncancelled (the canceller measures that path); a coupling learned from a lucky quiet residual
would otherwise let the robot interrupt itself.

Time is counted in audio blocks, not wall time, so the guard behaves the same under test clocks.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Protocol

SILENT_DB = -60.0  # output quieter than this is not heard at the mic
_ALIGN = 0.15  # s: the echo arrives a device buffer after the block was written
_COUPLING_START = -6.0  # dB: before anything is learned, assume a loud speaker next to the mic
_COUPLING_RANGE = (-60.0, 10.0)


def guard_margin(margin_db: float, echo_cancelled: bool, residual_margin_db: float) -> float | None:
    """The margin a voice needs over the residual echo once the canceller has converged (None: no canceller)."""
    return min(margin_db, residual_margin_db) if echo_cancelled else None


class CancellerView(Protocol):
    """What the guard reads of the echo canceller in front of the microphone."""

    @property
    def converged(self) -> bool: ...

    @property
    def echo_path_db(self) -> float | None: ...  # microphone minus reference level, before cancelling


class EchoGuard:
    def __init__(
        self,
        mode: str,
        block_seconds: float,
        margin_db: float = 12.0,
        tail: float = 0.3,
        learn_window: float = 3.0,
        cancelled_margin_db: float | None = None,
    ) -> None:
        self.mode = mode
        self.block_seconds = block_seconds
        self.full_margin_db = margin_db
        # With an echo canceller: the margin once it has converged (until then its residual is not known).
        self.cancelled_margin_db = cancelled_margin_db
        self.canceller: CancellerView | None = None
        self.tail = tail
        self.now = 0.0  # audio clock: seconds of microphone audio seen
        self._outputs: deque[tuple[float, float]] = deque()  # (time, dB) of recent output blocks
        self._last_loud_output = float("-inf")
        self._coupling: deque[float] = deque(maxlen=max(5, round(learn_window / block_seconds)))
        self._coupling_db: float | None = None

    @property
    def margin_db(self) -> float:
        if self.cancelled_margin_db is not None and self._trusted():
            return self.cancelled_margin_db
        return self.full_margin_db

    def _trusted(self) -> bool:
        return self.canceller is None or self.canceller.converged

    def tick(self) -> None:
        """One microphone block went by."""
        self.now += self.block_seconds
        horizon = self.now - _ALIGN
        while self._outputs and self._outputs[0][0] < horizon:
            self._outputs.popleft()

    def on_output(self, db: float) -> None:
        """The sink wrote a block this loud (dBFS); -100 when playback stopped."""
        self._outputs.append((self.now, db))
        if db > SILENT_DB:
            self._last_loud_output = self.now

    @property
    def playing(self) -> bool:
        return self.mode != "off" and self.now - self._last_loud_output <= self.tail + _ALIGN

    @property
    def recent_output_db(self) -> float:
        return max((db for _, db in self._outputs), default=-100.0)

    @property
    def coupling_db(self) -> float:
        learned = self._coupling_db if self._coupling_db is not None else _COUPLING_START
        if self.canceller is None or self.canceller.converged:
            return learned
        raw = self.canceller.echo_path_db
        return max(learned, _COUPLING_START if raw is None else min(_COUPLING_RANGE[1], raw))

    def expected_echo_db(self) -> float | None:
        """How loud the robot's own voice should be at the mic now, or None when it is quiet."""
        if not self.playing:
            return None
        out = self.recent_output_db
        if out <= SILENT_DB:
            out = SILENT_DB  # the tail: the last loud block is gone from the window but the room still rings
        return out + self.coupling_db

    def learn(self, mic_db: float) -> None:
        """While the robot speaks, learn the coupling from what the mic hears."""
        out = self.recent_output_db
        if self.mode == "off" or out <= SILENT_DB or mic_db <= -99:
            return
        self._coupling.append(mic_db - out)
        if len(self._coupling) >= 10:
            lo, hi = _COUPLING_RANGE
            self._coupling_db = min(hi, max(lo, statistics.median(self._coupling)))
