"""Microphones that are not sound cards: a WAV file, silence with a phrase now and then, a list of blocks."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import trio

from appliance.audio.base import CAPTURE_RATE, AudioClip, BlockQueue
from appliance.audio.convert import read_wav, resample

log = logging.getLogger(__name__)

_AHEAD = 2  # listener-paced file input: at most this many blocks waiting for the listener


def bundled_clip(name: str) -> AudioClip:
    """A WAV shipped in ``appliance/assets``."""
    from appliance.audio.convert import decode_wav

    data = resources.files("appliance.assets").joinpath(name).read_bytes()
    return decode_wav(data, name=name)


def to_capture_rate(clip: AudioClip) -> np.ndarray:
    return resample(clip.samples, clip.sample_rate, CAPTURE_RATE)


class PacedSource:
    """Emits blocks at the pace a real microphone would, on Trio's clock (so MockClock tests run instantly)."""

    name = "paced"

    def __init__(self, block_ms: int = 20, speed: float = 1.0) -> None:
        self.block_size = CAPTURE_RATE * block_ms // 1000
        self.block_seconds = self.block_size / CAPTURE_RATE / speed  # speed > 1: faster than real time (tests)
        self._silence = np.zeros(self.block_size, dtype=np.int16)

    def _blocks_of(self, samples: np.ndarray) -> Iterable[np.ndarray]:
        for start in range(0, len(samples), self.block_size):
            block = samples[start : start + self.block_size]
            if len(block) < self.block_size:
                block = np.concatenate([block, self._silence[: self.block_size - len(block)]])
            yield block

    async def _emit(self, queue: BlockQueue, blocks: Iterable[np.ndarray], start: float) -> float:
        """Put blocks into the queue, each when a microphone would have finished recording it."""
        due = start
        for block in blocks:
            due += self.block_seconds
            await trio.sleep_until(due)
            queue.put_nowait(block)
        return due

    async def _silence_until(self, queue: BlockQueue, start: float, until: float) -> float:
        due = start
        while due + self.block_seconds <= until:
            due = await self._emit(queue, [self._silence], due)
        return due


class SimulatedMicrophone(PacedSource):
    """Silence, with a phrase spoken ``speech_after`` seconds after start (and every ``repeat`` seconds)."""

    name = "simulated"

    def __init__(
        self,
        phrase: AudioClip | None,
        speech_after: float | Literal["never"] | None = 2.0,
        repeat: float | None = None,
        block_ms: int = 20,
    ) -> None:
        super().__init__(block_ms)
        self.phrase = to_capture_rate(phrase) if phrase is not None else None
        self.speech_after = speech_after
        self.repeat = repeat

    async def run(self, queue: BlockQueue, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        due = trio.current_time()
        after = self.speech_after
        if self.phrase is None or not isinstance(after, int | float):  # None or "never": only silence
            await self._silence_until(queue, due, float("inf"))
            return
        next_phrase = due + after
        while True:
            due = await self._silence_until(queue, due, next_phrase)
            log.info("simulated microphone: speaking its phrase (%.1f s)", len(self.phrase) / CAPTURE_RATE)
            due = await self._emit(queue, self._blocks_of(self.phrase), due)
            if self.repeat is None:
                await self._silence_until(queue, due, float("inf"))
                return
            next_phrase = due + self.repeat


class WavFileSource(PacedSource):
    """Plays a WAV file into the microphone path once, then silence (a quiet room).

    ``pace = "realtime"``: each block when a microphone would have recorded it. ``pace = "listener"``: the file's
    blocks go in as fast as the listener takes them (never more than ``_AHEAD`` waiting), so a machine too slow
    for real time (an emulated Pi) still hears every block, only later; the silence after it is real time.
    """

    name = "file"

    def __init__(
        self,
        path: Path,
        block_ms: int = 20,
        lead_in: float = 0.5,
        speed: float = 1.0,
        pace: Literal["realtime", "listener"] = "realtime",
    ) -> None:
        super().__init__(block_ms, speed)
        self.path = path
        self.lead_in = lead_in
        self.pace = pace
        self.samples = to_capture_rate(read_wav(path))  # fail at construction: config check sees it

    async def run(self, queue: BlockQueue, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.pace == "listener":
            silence = [self._silence] * round(self.lead_in * CAPTURE_RATE / self.block_size)
            for block in [*silence, *self._blocks_of(self.samples)]:
                await queue.wait_room(_AHEAD)
                queue.put_nowait(block)
            log.info("file microphone: %s handed over whole (%.1f s)", self.path, len(self.samples) / CAPTURE_RATE)
            await self._silence_until(queue, trio.current_time(), float("inf"))
            return
        due = trio.current_time()
        due = await self._silence_until(queue, due, due + self.lead_in)
        due = await self._emit(queue, self._blocks_of(self.samples), due)
        await self._silence_until(queue, due, float("inf"))
