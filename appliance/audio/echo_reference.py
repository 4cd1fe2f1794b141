"""The speaker's reference for the echo canceller, on a timeline that cannot slip.

The sink hands every block it plays to a :class:`FarEndTap` (from its audio callback: an append under a lock), with the
time its first sample reaches the speaker when the host API says so. The capture side resamples them to 16 kHz and
writes them one after the other onto a timeline of reference samples; the microphone reads from the same timeline,
sample for sample, at an offset set once. Where the reference has not arrived yet (the resampler hands its output over
in bursts of up to 37 ms; the two callbacks run in either order), the microphone gets silence, and when the late samples
come the pairing moves back by their lateness and a frame, so they land in hand and the margin grows to the worst burst
seen (the pairing by arrival kept a fixed 5 ms and slipped by every deficit, all along). A pause in the speaker's output
(its stream stopped, the device was reopened) is measured from its time stamps and written as silence; a pause of the
microphone (a new stream) moves the microphone's position by as long, measured from its own stamps.

The offset: the first pairing takes the newest reference minus ``slack`` (the echo lags its reference by the round trip
minus this; AEC3's delay estimator finds that lag). From then on only the measured drift (the reference is resampled by
it), the delay estimator (:meth:`FarEndTap.advance`) and reference later than any margin kept so far move it. A sink
without stamps (simulated, the bench) that leaves the microphone more than ``_MAX_DEBT`` ahead has stopped, not fallen
behind: its next block is paired by arrival again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from appliance.audio.base import CAPTURE_RATE
from appliance.audio.convert import to_int16
from appliance.audio.echo_alignment import FRAME, BacklogLow

log = logging.getLogger(__name__)

_MAX_BACKLOG = 0.6  # s of reference kept ahead of the mic; more means the pairing is lost: resynchronise
# s of reference kept in hand at a first pairing by arrival: the echo still lags its reference by the round
# trip minus this, and any real round trip (output buffer + input buffer) is longer.
_SLACK = 0.005
# s of reference the microphone may be ahead of without stamps before the speaker counts as stopped (not late):
# its next block is then paired by arrival. Longer than the resampler's bursts (37 ms).
_MAX_DEBT = 0.15
# s a stream may start later (or earlier) than its last block ended before it counts as a pause. A stamp is read
# on the monotonic clock when the Python callback runs, after waiting for the GIL (its switch interval is 5 ms):
# they jitter by that much. A real pause (a stream reopened, restarted after an underrun) lasts far longer.
_GAP = 0.05
# soxr's medium quality: flat to 7.4 kHz as HQ (its 16-bit stop band is plenty for a reference), and at a drift
# correction's ratio (not a simple fraction) it hands on at most 32 ms at once, 9 ms late; HQ 73 ms, 50 ms late
# (so the first correction moved the pairing back by 40 ms, and every echo lag had to be that much longer).
_QUALITY = "MQ"
# s of the speaker's last blocks a retuned resampler is primed with (longer than its delay): it then goes on
# without the gap a fresh one would leave.
_PRIME = 0.06


def callback_time(time_info: Any, stamp: str) -> float | None:
    """A PortAudio callback's ``stamp`` (``outputBufferDacTime``, ``inputBufferAdcTime``) on ``time.monotonic``'s
    clock, or None where the host API gives none (or the caller passes no PortAudio time info: tests).

    Each stream counts its time from its own zero on some host APIs (JACK), so only the difference to the
    callback's ``currentTime`` is used. Call it from the callback itself.
    """
    try:
        stream_time, current_time = getattr(time_info, stamp), time_info.currentTime
    except AttributeError:
        return None
    ahead = stream_time - current_time
    if not stream_time or not current_time or abs(ahead) > 1.0:
        return None
    return time.monotonic() + ahead


class FarEndTap:
    """What the speaker played, for the echo canceller. ``played`` may be called from the audio thread.

    Timeline positions are 16 kHz reference samples: ``_write`` is where the next resampled sample lands,
    ``_read`` the next one the microphone pairs with; ``_ref`` holds what lies between (empty while the
    microphone is ahead: ``_write - _read``, the backlog, is negative then).
    """

    def __init__(self, max_backlog: float = _MAX_BACKLOG, history: int = 0, slack: float = _SLACK) -> None:
        self.max_backlog = int(max_backlog * CAPTURE_RATE)
        self.slack = int(slack * CAPTURE_RATE)
        self._lock = threading.Lock()
        self._arrived: deque[tuple[np.ndarray, int, float | None]] = deque()
        self._ref = np.zeros(0, dtype=np.int16)
        self._write = 0
        self._read = 0
        self._rate = 0
        self._resampler: Any = None
        self._played_until: float | None = None  # when the last stamped block ends (monotonic s)
        self._mic_clock: tuple[int, float] | None = None  # (mic sample, its ADC time): the last stream's stamp
        self._mic_gap = 0  # samples the microphone stream was away for (the read position moves on by them)
        self._correction = 0.0  # ppm the reference is resampled by (measured drift)
        self._played_recently: deque[np.ndarray] = deque(maxlen=64)  # to prime a retuned resampler
        self._skip = 0  # samples a retuned resampler gives again of what its predecessor already gave
        self._synced = False
        self._stamped = False  # the speaker's stamps keep its timeline (its pauses are measured, not guessed)
        self.low = BacklogLow()
        self.mic_samples = 0
        self.resyncs = 0
        self.pairings = 0  # times the pairing was set by arrival (first, after a resync, a stop or a drop)
        self.moved = 0  # samples the pairing moved by (advances, late reference, the microphone away): later is more
        self.advances = 0
        self.played_samples = 0
        self.ran_dry = 0  # takes that found part of their reference not yet arrived (padded; the pairing holds)
        self.late_samples = 0  # reference samples that came after their microphone samples (dropped in place)
        self.gaps = 0  # pauses of the speaker or the microphone stream, measured by their stamps
        self.retreats = 0  # the reference kept running dry: paired later, by its worst deficit
        self._starting = 0  # blocks of a restarted speaker stream still coming in late as it starts (not counted)
        # Tests: keep the raw blocks as played (exactly what went to the device), up to ``history`` blocks.
        self.history: deque[np.ndarray] | None = deque(maxlen=history) if history else None

    def played(self, samples: np.ndarray, rate: int, at: float | None = None) -> None:
        """The sink just played ``samples`` (int16 mono at ``rate``), the first reaching the speaker at ``at``
        (``time.monotonic`` seconds; None when the sink cannot tell)."""
        block = np.array(samples, dtype=np.int16, copy=True).reshape(-1)
        with self._lock:
            self._arrived.append((block, rate, at))
            self.played_samples += len(block)
            if self.history is not None:
                self.history.append(block)

    def mic_time(self, at: float) -> None:
        """A new microphone stream: its first sample, the next one handed to :meth:`take`, was captured at ``at``
        (``time.monotonic`` s). The time since the last stream's samples ended moves the pairing by as much.

        Only stamps of the same microphone are compared: PortAudio's DAC and ADC times do not agree with each
        other on every host API (on JACK they put the echo 90 ms before its reference), its own ones do."""
        if self._mic_clock is not None and self._synced:
            last_at, last_time = self._mic_clock
            gap = round((at - last_time) * CAPTURE_RATE) - (self.mic_samples - last_at)
            if gap > _GAP * CAPTURE_RATE:
                self._mic_gap += gap
                self.gaps += 1
        self._mic_clock = (self.mic_samples, at)

    @property
    def backlog(self) -> int:
        """Reference samples :meth:`advance` can drop without running dry: the least in hand over the last
        second or two (the resampler's bursts and the callbacks' order make it swing), minus a margin."""
        low = min(self.low.recent_min(), len(self._ref))
        return max(0, int(low) - self.slack - FRAME * 2)

    @property
    def ahead(self) -> int:
        """Reference samples written beyond the microphone's position (negative: the reference is late)."""
        return self._write - self._read

    def advance(self, samples: int) -> None:
        """Hand the reference over ``samples`` sooner (the echo was seen arriving before its reference)."""
        self._move_read(samples)
        self.advances += 1
        self.low.reset()  # the backlog steps: its low before is not what is in hand

    def drop(self, skipped: int = 0) -> None:
        """Forget every reference sample: the canceller is not running (``skipped`` microphone samples passed
        untouched); the next :meth:`take` pairs afresh."""
        self.mic_samples += skipped
        with self._lock:
            self._arrived.clear()
        self._ref = np.zeros(0, dtype=np.int16)
        self._read = self._write
        self._synced = self._stamped = False
        self._played_until = None
        self._mic_gap = 0
        self.low.reset()

    @property
    def correction_ppm(self) -> float:
        return self._correction

    def take(self, n: int) -> np.ndarray:
        """The ``n`` reference samples that pair with the next ``n`` microphone samples."""
        with self._lock:
            arrived, self._arrived = self._arrived, deque()
        for block, rate, at in arrived:
            self._add(block, rate, at)
        self._pair(n)
        if not self._synced:  # nothing to pair with: silence, and the timeline waits for the first reference
            out = np.zeros(n, dtype=np.int16)
        else:
            out = self._ref[:n]
            if len(out) < n:
                self.ran_dry += 1
                out = np.concatenate([out, np.zeros(n - len(out), dtype=np.int16)])
            self._ref = self._ref[n:]
            self._read += n
        self.mic_samples += n
        self.low.observe(self.mic_samples / CAPTURE_RATE, self.ahead)
        return out

    def _keep_ahead(self, lateness: int) -> None:
        """Reference came ``lateness`` samples after the microphone samples it pairs with: pair later by that
        much and a frame, so that it, and as late a next one, is still in hand.

        The first pairing guesses how far ahead the reference must be kept (the resampler's bursts, the order
        the two callbacks run in); this measures it, at once, while AEC3 has learned little. It moves the
        pairing, as the delay estimator does, only when reference comes later than any margin kept so far.
        """
        shift = lateness + FRAME
        self._move_read(-shift)
        self.retreats += 1
        self.low.reset()  # the backlog steps: its low before is not what is in hand
        log.info("echo reference arrived late: paired %d ms later", shift * 1000 // CAPTURE_RATE)

    def _pair(self, n: int) -> None:
        """Set the pairing where there is none (or it is lost); otherwise leave it exactly where it is."""
        if self._mic_gap:
            self._move_read(self._mic_gap)  # the microphone was away: the reference ran on meanwhile
            self._mic_gap = 0
        if self._synced and self.ahead > self.max_backlog + n + self.slack:
            self.resyncs += 1
            log.info("echo reference resynchronised (%d ms ahead of the microphone)", self.ahead * 1000 // CAPTURE_RATE)
            self.low.reset()
            self._pair_by_arrival(n)
        elif not self._synced or (not self._stamped and self.ahead < -_MAX_DEBT * CAPTURE_RATE):
            self._pair_by_arrival(n)  # the first pairing, or the speaker stopped (no stamps): its next block

    def _pair_by_arrival(self, n: int) -> None:
        """The newest reference pairs with the end of the next microphone block (minus the slack)."""
        if not self._ref.size:
            self._move_read(self.ahead)  # nothing in hand: wait at the write position, pair with the next block
            if self._synced:
                self.low.reset()  # the backlog steps back to nothing
            self._synced = False
            return
        self._move_read(self.ahead - (n + self.slack))
        self._synced = True
        self.pairings += 1
        self._stamped = self._played_until is not None  # from now on the speaker's stamps keep its timeline

    def _move_read(self, samples: int) -> None:
        """Move the microphone's position on the timeline (what lies before it is dropped)."""
        self._read += samples
        self.moved += samples
        ahead = self.ahead
        if ahead <= 0:
            self._ref = np.zeros(0, dtype=np.int16)
        elif ahead > len(self._ref):  # moved back past what is kept: silence there
            self._ref = np.concatenate([np.zeros(ahead - len(self._ref), dtype=np.int16), self._ref])
        else:
            self._ref = self._ref[len(self._ref) - ahead :]

    def _write_samples(self, samples: np.ndarray | int) -> None:
        """Write resampled reference (or that many samples of silence: a pause) at the write position."""
        count = samples if isinstance(samples, int) else len(samples)
        if count <= 0:
            return
        late = max(0, min(count, self._read - self._write))
        if late and self._synced and not isinstance(samples, int) and not self._starting:
            self.late_samples += late
            self._keep_ahead(self._read - self._write)
            late = 0
        self._write += count
        if late == count:
            return
        part = np.zeros(count - late, dtype=np.int16) if isinstance(samples, int) else samples[late:]
        self._ref = np.concatenate([self._ref, part]) if self._ref.size else part

    def _unwrite(self, samples: int) -> None:
        """Take back the last ``samples`` written (never played); what the microphone already read stays."""
        self._write -= samples
        self._ref = self._ref[: max(0, self.ahead)]

    def _add(self, block: np.ndarray, rate: int, at: float | None) -> None:
        if rate != self._rate or (self._resampler is None and rate != CAPTURE_RATE):
            self._new_resampler(rate)
        if at is not None:
            self._pause(at, rate)
            self._played_until = at + len(block) / rate
        self._starting = max(0, self._starting - 1)
        self._played_recently.append(block)
        if self._resampler is None:
            self._write_samples(block)
            return
        # In float, rounded here: soxr's int16 output is dithered from a seed of its own per stream, so the same
        # speech gave another reference each time and the canceller decided differently run to run.
        out = to_int16(self._resampler.resample_chunk(block.astype(np.float32)))
        if self._skip:
            skipped = min(self._skip, len(out))
            out, self._skip = out[skipped:], self._skip - skipped
        self._write_samples(out)

    def _pause(self, at: float, rate: int) -> None:
        """A pause since the last stamped block is written as silence (or what never played is taken back)."""
        gap = 0.0 if self._played_until is None else at - self._played_until
        if abs(gap) > _GAP:
            # Later: the speaker was silent (its stream stopped). Earlier: the end of the last stream never
            # played (closed with its buffer full): that reference is taken back where it is still in hand.
            self.gaps += 1
            self._starting = 4
            self._new_resampler(rate)  # its tail first: what it holds was played before the gap
            if gap > 0:
                self._write_samples(round(gap * CAPTURE_RATE))
            else:
                self._unwrite(round(-gap * CAPTURE_RATE))

    def _new_resampler(self, rate: int, primed: bool = False) -> None:
        """A resampler for ``rate`` at the current correction; the old one's tail goes onto the timeline first.

        ``primed`` (the same stream at another correction): the new one first hears the last blocks again and
        what it makes of them is dropped, so it carries on at once. A fresh one holds its first 26 ms back: the
        reference ran dry and the pairing moved back by as much at every correction (the bench's living room)."""
        if self._resampler is not None:
            self._write_samples(to_int16(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)))
        self._rate = rate
        self._skip = 0
        if rate == CAPTURE_RATE and self._correction == 0.0:
            self._resampler = None
            return
        import soxr

        # The reference has ``1 + ppm`` times as many samples as the mic wants: resample from that much more.
        source_rate = rate * (1.0 + self._correction * 1e-6)
        self._resampler = soxr.ResampleStream(source_rate, CAPTURE_RATE, 1, dtype="float32", quality=_QUALITY)
        if primed and self._played_recently:
            blocks, need = [], _PRIME * rate
            while self._played_recently and need > 0:
                blocks.append(self._played_recently.pop())
                need -= len(blocks[-1])
            history = np.concatenate(blocks[::-1])
            given = len(self._resampler.resample_chunk(history.astype(np.float32)))
            self._skip = max(0, round(len(history) * CAPTURE_RATE / source_rate) - given)
        self._played_recently.clear()

    def correct_drift(self, ppm: float) -> None:
        """The reference gains ``ppm`` more samples per microphone sample than the correction so far removes
        (the canceller measures it on the echo): resample by that much more, from here on."""
        self._correction = max(-2000.0, min(2000.0, self._correction + ppm))
        log.info("echo reference: clock drift %+.1f ppm, resampling by %+.1f ppm", ppm, self._correction)
        self._new_resampler(self._rate or CAPTURE_RATE, primed=True)
        self.low.reset()
