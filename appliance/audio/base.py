"""Shapes every audio implementation shares.

Capture is always 16 kHz mono int16 in fixed-size blocks (what VAD, wake word and cloud STT want).
Playback takes whole clips at any rate; sinks resample to what their device needs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import trio

CAPTURE_RATE = 16_000


@dataclass(frozen=True, eq=False)
class AudioClip:
    """Mono int16 samples and their rate."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        if self.samples.dtype != np.int16 or self.samples.ndim != 1:
            raise ValueError("AudioClip needs a 1-D int16 array")
        if self.sample_rate <= 0:
            raise ValueError(f"bad sample rate {self.sample_rate}")

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    def pcm(self) -> bytes:
        """Raw little-endian s16 bytes."""
        return self.samples.astype("<i2", copy=False).tobytes()

    @classmethod
    def from_pcm(cls, data: bytes, sample_rate: int) -> AudioClip:
        if len(data) % 2:
            data = data[:-1]  # a cut stream can end mid-sample; the half sample is noise
        return cls(np.frombuffer(data, dtype="<i2").astype(np.int16), sample_rate)

    @classmethod
    def silence(cls, seconds: float, sample_rate: int = CAPTURE_RATE) -> AudioClip:
        return cls(np.zeros(int(seconds * sample_rate), dtype=np.int16), sample_rate)


class AudioStream:
    """Speech that is still arriving (a TTS response being downloaded): int16 mono pieces at one rate.

    Playing it as it arrives saves the whole download time before the first word. The producer sends
    pieces and closes its channel; a failure mid-way is sent as the exception itself and raised to the
    reader, after the audio that did arrive.
    """

    def __init__(self, sample_rate: int, pieces: trio.MemoryReceiveChannel[np.ndarray | BaseException]) -> None:
        self.sample_rate = sample_rate
        self._pieces = pieces

    @classmethod
    def open(cls, sample_rate: int) -> tuple[trio.MemorySendChannel[np.ndarray | BaseException], AudioStream]:
        send, receive = trio.open_memory_channel[np.ndarray | BaseException](float("inf"))
        return send, cls(sample_rate, receive)

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        async with self._pieces:
            async for piece in self._pieces:
                if isinstance(piece, BaseException):
                    raise piece
                yield piece

    def receive_nowait(self) -> np.ndarray:
        """The next piece if it has already arrived (a reader gathering what is ready before it writes):
        ``trio.WouldBlock`` if not yet, ``trio.EndOfChannel`` after the last; a failure sent is raised."""
        return _piece(self._pieces.receive_nowait())

    async def receive(self) -> np.ndarray:
        """The next piece, waiting for it; ends and fails as ``receive_nowait``."""
        return _piece(await self._pieces.receive())

    def close(self) -> None:
        """No more reading: the producer's further pieces are refused."""
        self._pieces.close()

    async def read_all(self) -> AudioClip:
        pieces = [piece async for piece in self]
        data = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
        return AudioClip(data, self.sample_rate)


def _piece(item: np.ndarray | BaseException) -> np.ndarray:
    if isinstance(item, BaseException):
        raise item
    return item


Audio = AudioClip | AudioStream


def level_db(block: np.ndarray) -> float:
    """RMS level in dBFS; silence is -100."""
    if block.size == 0:
        return -100.0
    # A dot product, not mean(square): 5 us instead of 25 us a 20 ms block, and every block is measured (the VAD
    # while listening, the meter while speaking).
    samples = block.astype(np.float64).ravel()
    rms = math.sqrt(float(samples.dot(samples)) / samples.size) / 32768.0
    return 20.0 * math.log10(rms) if rms > 1e-5 else -100.0


# A consumer taking blocks that are already waiting gives the event loop a turn every this many blocks.
YIELD_EVERY = 8


class BlockQueue:
    """Capture blocks from a producer that must never wait (an audio callback) to one async consumer.

    When the consumer falls behind, the oldest blocks are dropped and counted: late audio is worth less than
    current audio, and the audio thread must never block.
    """

    def __init__(self, max_blocks: int = 100) -> None:
        self._blocks: deque[np.ndarray] = deque(maxlen=max_blocks)
        self._lot = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()  # producers waiting for the consumer (wait_room)
        self.dropped = 0
        self._unyielded = 0  # blocks taken in a row without giving the event loop a turn
        # Set by the consumer when nothing is going on (nobody speaking, robot idle): the producer may then
        # hand audio over in batches, waking the event loop a few times a second instead of every device
        # block. Read from the audio thread; a bool is safe to share under the GIL.
        self.relaxed = False
        # Set by the consumer while the robot thinks or speaks and nobody else does: the producer may then
        # gather a few device blocks per hand-over (it knows how many); a voice makes the consumer clear it.
        self.busy = False

    def put_nowait(self, block: np.ndarray) -> None:
        if len(self._blocks) == self._blocks.maxlen:
            self.dropped += 1
        self._blocks.append(block)
        if self._lot:  # the consumer is waiting (a hand-over brings several blocks: only the first wakes it)
            self._lot.unpark_all()

    async def get(self) -> np.ndarray:
        if self._blocks:
            # Yield now and then even when blocks are waiting: a consumer that has fallen behind real time
            # would otherwise never give the loop back (no watchdog pings, no SIGTERM), as seen on a slow
            # virtual Pi. Not for every block: each idle hand-over brings several blocks, and a pass of the
            # event loop per block cost more than the blocks' own work (bench listening, live idle figure).
            self._unyielded += 1
            if self._unyielded >= YIELD_EVERY:
                self._unyielded = 0
                await trio.lowlevel.checkpoint()
        while not self._blocks:
            self._unyielded = 0
            await self._lot.park()
        block = self._blocks.popleft()
        if self._room:
            self._room.unpark_all()
        return block

    async def wait_room(self, ahead: int) -> None:
        """Return once fewer than ``ahead`` blocks wait: a producer that may wait (a file, not a sound card)
        keeps pace with the consumer instead of overrunning it."""
        while len(self._blocks) >= ahead:
            await self._room.park()

    def clear(self) -> None:
        self._blocks.clear()
        self._room.unpark_all()

    def __len__(self) -> int:
        return len(self._blocks)


@runtime_checkable
class AudioSource(Protocol):
    """A microphone: puts 16 kHz mono int16 blocks of ``block_size`` samples into the queue until cancelled."""

    name: str
    block_size: int

    async def run(
        self, queue: BlockQueue, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...


LevelCallback = Callable[[float], None]


@runtime_checkable
class AudioSink(Protocol):
    """A speaker. ``play`` returns when the audio has been heard; cancelling it stops within one block.

    ``audio`` is a whole clip or an :class:`AudioStream` still arriving (played as it comes).
    """

    name: str

    def open(self) -> AbstractAsyncContextManager[None]: ...

    async def play(self, audio: Audio, on_level: LevelCallback | None = None) -> None: ...
