"""The canceller's side of the two clocks: the echo's drift measured on its delay estimates and handed to the tap
(which resamples the reference by it), and the linear filter's own drift following kept in step with it.

The tap's backlog cannot tell the drift (see :class:`appliance.audio.echo_alignment.EchoDrift`); the echo can.
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
        self._moved = tap.moved  # the tap's moves of the pairing at the last estimate

    def _pairing(self, mic_delay: int) -> tuple[int, float, int]:
        """How the pairing stands: estimates are compared only within one such state (the tap's moves of it are
        taken out of the lags instead: they are counted)."""
        return (self.tap.pairings, self.tap.correction_ppm, mic_delay)

    def steady(self, mic_delay: int) -> bool:
        """The echo has stayed put (no drift left) and the pairing has not moved since the last estimate: the delay
        need not be measured as often."""
        return self.drift.steady and self._moved == self.tap.moved and self.drift.epoch == self._pairing(mic_delay)

    def delay_estimated(self, lag_ms: float, mic_delay: int, linear: LinearEchoFilter | None) -> None:
        """A delay estimate: measure the drift on the reference's own timeline (the tap's moves taken out), correct
        it once known, and keep the linear filter's own drift following in step."""
        tap = self.tap
        timeline = lag_ms - tap.moved * 1000 / CAPTURE_RATE
        self._moved = tap.moved
        drift = self.drift.observe(tap.mic_samples / CAPTURE_RATE, timeline, self._pairing(mic_delay))
        if drift is not None:
            tap.correct_drift(drift)
        if linear is not None:
            # The echo moves by as much less as the correction changed (the filter's estimates so far show the old).
            linear.clock_corrected(tap.correction_ppm - self._correction)
            linear.observe_lag(lag_ms)
        self._correction = tap.correction_ppm
