"""When the echo canceller cannot stay aligned, ``echo_cancel = "auto"`` switches it off by itself.

A canceller whose reference is not where the echo is removes nothing and, worse, lowers the self-trigger
guard's margin on the strength of an ERLE it no longer has. On a slow machine (the emulated Pi) the capture
falls behind real time: the speaker's reference piles up ahead of the microphone, is resynchronised, piles up
again. :class:`EchoHealth` watches for the signs:

- the capture delivers clearly less audio than real time (measured against the Trio clock while blocks keep
  coming; a gap, such as a mute or a device reopen, starts the measurement over), in every window for a
  whole window's time: a stall of a few hundred ms (a sound server rewiring its graph as a device opens) makes
  one window look slow, a slow machine makes them all;
- the alignment keeps resynchronising (``resyncs`` within ``resync_window`` seconds of microphone audio);
- the echo's delay estimate leaves what the canceller can follow, several estimates in a row.

Under ``auto`` the first sign backs the canceller off: blocks pass through untouched, the guard goes back to
its full margin, the status says ``backed_off`` with the reason, one WARNING is logged; it retries after
``retry_after`` seconds of microphone audio (doubling each time it backs off again). Under ``webrtc`` it keeps
running and the status says ``misaligned``. Time is microphone audio except for the capture-rate check, so the
policy is deterministic under test clocks.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

EchoState = Literal["running", "backed_off", "misaligned"]


@dataclass(frozen=True)
class BackoffLimits:
    min_capture_rate: float = 0.97  # microphone seconds per real second below this: the capture lags
    rate_window: float = 5.0  # real seconds the capture rate is measured over (a misaligned canceller hurts)
    max_gap: float = 2.0  # real seconds without a block: the capture stopped (mute, reopen), not a lag
    resyncs: int = 2  # this many resynchronisations (one follows any mute or reopen)...
    resync_window: float = 300.0  # ...within this many seconds of microphone audio
    delay_misses: int = 3  # consecutive delay estimates the canceller cannot follow
    retry_after: float = 120.0  # s of microphone audio before a backed-off canceller tries again
    max_retry_after: float = 1800.0


class EchoHealth:
    """Whether the canceller is aligned well enough to run; decides backing off and retrying."""

    def __init__(self, may_back_off: bool, limits: BackoffLimits | None = None) -> None:
        self.may_back_off = may_back_off
        self.limits = limits or BackoffLimits()
        self.state: EchoState = "running"
        self.reason: str | None = None
        self.backoffs = 0
        self._retry_after = self.limits.retry_after
        self._retry_at = 0.0
        self._mic = 0.0  # s of microphone audio seen
        self._rate_points: deque[tuple[float, float]] = deque()  # (real time, microphone seconds by then)
        self._arrival: float | None = None  # real time the latest blocks arrived
        self._lagging_since: float | None = None  # real time the windows started looking slow
        self._resync_times: deque[float] = deque()
        self._delay_misses = 0
        self._warned = False

    @property
    def backed_off(self) -> bool:
        return self.state == "backed_off"

    def block(self, seconds: float, now: float | None) -> bool:
        """A microphone block of ``seconds`` arrived at real time ``now`` (None: no clock). True: retry now."""
        if now is not None and now != self._arrival:
            # Blocks may come in batches (a relaxed queue): a rate is only exact between complete arrivals.
            if self._arrival is not None and not self.backed_off:
                self._check_rate(self._arrival)
            self._arrival = now
        self._mic += seconds
        if self.backed_off and self._mic >= self._retry_at:
            self._retry()
            return True
        return False

    def _check_rate(self, then: float) -> None:
        """Every block that arrived at real time ``then`` has been counted."""
        points = self._rate_points
        if points and then - points[-1][0] > self.limits.max_gap:
            points.clear()  # the capture stopped for a while: not a lag
            self._lagging_since = None
        points.append((then, self._mic))
        while len(points) > 2 and then - points[1][0] >= self.limits.rate_window:
            points.popleft()
        span = then - points[0][0]
        if span >= self.limits.rate_window:
            rate = (self._mic - points[0][1]) / span
            if rate >= self.limits.min_capture_rate:
                self._lagging_since = None
                return
            if self._lagging_since is None:
                self._lagging_since = then
            if then - self._lagging_since >= self.limits.rate_window:
                self._trouble(f"capture lags real time ({rate:.0%} of real time over {span:.0f} s)")

    def resynced(self) -> None:
        """The reference had piled up beyond any room's delay and was paired afresh."""
        times = self._resync_times
        times.append(self._mic)
        while times and times[0] < self._mic - self.limits.resync_window:
            times.popleft()
        if len(times) >= self.limits.resyncs:
            self._trouble(f"alignment resynchronised {len(times)} times in {self.limits.resync_window:.0f} s")

    def delay_estimated(self, followable: bool, delay_ms: float) -> None:
        """A delay estimate came in; ``followable``: within what alignment and AEC3 can handle."""
        self._delay_misses = 0 if followable else self._delay_misses + 1
        if self._delay_misses >= self.limits.delay_misses:
            self._trouble(f"echo delay estimate out of range ({delay_ms:.0f} ms)")

    def _trouble(self, reason: str) -> None:
        if self.state != "running":
            return
        self.reason = reason
        if not self.may_back_off:
            self.state = "misaligned"
            log.warning("echo canceller cannot stay aligned: %s; echo_cancel = webrtc keeps it on", reason)
            return
        self.state = "backed_off"
        self.backoffs += 1
        self._retry_at = self._mic + self._retry_after
        level = logging.INFO if self._warned else logging.WARNING
        self._warned = True
        log.log(
            level,
            "echo canceller backed off: %s; self-trigger guard back to its full margin, retrying in %.0f s",
            reason,
            self._retry_after,
        )
        self._retry_after = min(self.limits.max_retry_after, self._retry_after * 2)

    def _retry(self) -> None:
        log.info("echo canceller retrying after backing off (%s)", self.reason)
        self.state, self.reason = "running", None
        self._rate_points.clear()
        self._lagging_since = None
        self._resync_times.clear()
        self._delay_misses = 0
