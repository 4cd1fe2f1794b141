"""When the self-trigger guard may trust the echo canceller (and lower its margin to what the residual needs).

Trust is judged on the last seconds of robot speech frame by frame: the user talking over the robot lowers the
ERLE of the frames they speak in (their voice is not echo), while the gaps between their syllables still show the
echo removed. Trusted while half the frames show it. Not a quarter: a canceller that lost the echo still shows it
in some frames, as AEC3's suppressor cuts what it takes for echo (livekit's, whose suppressor is bolder, in a
quarter to a third of the frames: tests/test_echo_trust.py). None is trusted before a whole window: AEC3 early on
can look converged (bench echo, hall: a false barge-in 1.4 s into the robot's speech).
"""

from __future__ import annotations

from collections import deque

from appliance.audio.base import CAPTURE_RATE
from appliance.audio.echo_alignment import FRAME

CONVERGED_DB = 12.0  # ERLE of a frame that counts as the echo removed
_CONVERGED_RATIO = 10 ** (CONVERGED_DB / 10)
WINDOW = 2.0  # s of robot speech
_SHARE = 0.5  # of its frames with the echo reduced by CONVERGED_DB


class EchoTrust:
    """Per frame of robot speech in the last ``WINDOW``: was the echo reduced by ``CONVERGED_DB`` (counted as the
    window moves on, no pass over it per block)."""

    def __init__(self) -> None:
        self._ok: deque[bool] = deque(maxlen=int(WINDOW * CAPTURE_RATE) // FRAME)
        self._count = 0
        self.trusted = False

    def frame(self, mic_power: float, out_power: float) -> None:
        """One frame of robot speech: the microphone's and the cleaned signal's power."""
        window = self._ok
        ok = mic_power + 1.0 >= _CONVERGED_RATIO * (out_power + 1.0)
        self._count += ok - (len(window) == window.maxlen and window[0])
        window.append(ok)

    def update(self, aligned: bool) -> None:
        """After a block: not trusted while misaligned; otherwise judged once a whole window is in."""
        if not aligned:
            self.trusted = False
        elif len(self._ok) == self._ok.maxlen:
            self.trusted = self._count >= _SHARE * len(self._ok)

    def restart(self) -> None:
        """Earned anew from here (the canceller stopped, or the reference was paired anew: AEC3 relearns)."""
        self._ok.clear()
        self._count = 0
        self.trusted = False
