"""The canceller's side of the two clocks: the echo's drift measured on its delay estimates and handed to the tap
(which resamples the reference by it), and the linear filter told whenever the reference's timing changes under it.

The tap's backlog cannot tell the drift (see :class:`appliance.audio.echo_alignment.EchoDrift`); the echo can. When
the tap moves the pairing (reference that came later than any margin so far, an advance, the microphone away), the
echo's lag steps by as much: the linear filter's echo path is moved with it, so it does not take its own
misprediction for the user's voice (the living room's false barge-in 1.7 s after such a step).
"""

from __future__ import annotations

from appliance.audio.base import CAPTURE_RATE
from appliance.audio.echo_alignment import EchoDrift
from appliance.audio.echo_linear import LinearEchoFilter
from appliance.audio.echo_reference import FarEndTap


class ClockFollower:
    def __init__(self, tap: FarEndTap) -> None:
        self.tap = tap
        self.drift = EchoDrift()
        self._correction = tap.correction_ppm  # what the linear filter has been told of
        self._moved = tap.moved

    def delay_estimated(self, lag_ms: float, mic_delay: int, linear: LinearEchoFilter | None) -> None:
        """A delay estimate: measure the drift on the reference's own timeline (the tap's moves taken out), correct
        it once known, and keep the linear filter's own drift following in step."""
        tap = self.tap
        timeline = lag_ms - tap.moved * 1000 / CAPTURE_RATE
        drift = self.drift.observe(
            tap.mic_samples / CAPTURE_RATE, timeline, (tap.pairings, tap.correction_ppm, mic_delay)
        )
        if drift is not None:
            tap.correct_drift(drift)
        self.follow(linear)
        if linear is not None:
            linear.observe_lag(lag_ms)

    def follow(self, linear: LinearEchoFilter | None) -> None:
        """Tell the linear filter what changed on the tap since it was last told (cheap: two comparisons)."""
        tap = self.tap
        if tap.moved != self._moved:
            if linear is not None:
                linear.pairing_moved(tap.moved - self._moved)
            self._moved = tap.moved
        if tap.correction_ppm != self._correction:
            if linear is not None:
                linear.clock_corrected(tap.correction_ppm - self._correction)
            self._correction = tap.correction_ppm
