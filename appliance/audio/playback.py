"""Sinks that play a clip block by block, so a cancelled turn stops within one block."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import trio
import trio.lowlevel

from appliance.audio.base import Audio, AudioClip, LevelCallback, level_db
from appliance.audio.convert import resample, write_wav
from appliance.streams import closing

log = logging.getLogger(__name__)


class FarEndTapLike(Protocol):
    def played(self, samples: np.ndarray, rate: int, at: float | None = None) -> None: ...


class BlockSink:
    """Common part of every sink: resample, apply gain, cut into blocks, report the level of each.

    Subclasses implement ``_write_block``, which must return when the block has been handed to the device
    (paced in real time for simulated and device sinks).
    """

    name = "sink"

    def __init__(self, sample_rate: int = 24_000, block_ms: int = 20, volume: float = 1.0) -> None:
        self.sample_rate = sample_rate
        self.block_ms = block_ms
        self.volume = volume
        self.played_samples = 0
        # The echo canceller's reference (appliance.audio.echo.FarEndTap): every block as it is played.
        self.far_end: FarEndTapLike | None = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        yield

    async def play(self, audio: Audio, on_level: LevelCallback | None = None) -> None:
        try:
            async with closing(self._blocks(audio)) as blocks:
                async for block in blocks:
                    if on_level is not None:
                        on_level(level_db(block))
                    await self._write_block(block)
                    self.played_samples += len(block)
                    self._tap(block)
        finally:
            if on_level is not None:
                on_level(-100.0)

    async def _blocks(self, audio: Audio) -> AsyncIterator[np.ndarray]:
        """Device-rate blocks of ``block_ms``, gain applied; a stream is resampled continuously."""
        size = max(1, self.sample_rate * self.block_ms // 1000)
        if isinstance(audio, AudioClip):
            samples = self._gain(resample(audio.samples, audio.sample_rate, self.sample_rate))
            for start in range(0, len(samples), size):
                yield samples[start : start + size]
            return
        resampler = None
        if audio.sample_rate != self.sample_rate:
            import soxr

            # One resampler for the whole stream: resampling piece by piece would click at every seam.
            resampler = soxr.ResampleStream(audio.sample_rate, self.sample_rate, 1, dtype="int16")
        pending = np.zeros(0, dtype=np.int16)
        async for piece in audio:
            if resampler is not None:
                piece = resampler.resample_chunk(piece)
            pending = np.concatenate([pending, self._gain(piece)])
            while len(pending) >= size:
                yield pending[:size]
                pending = pending[size:]
        if resampler is not None:
            pending = np.concatenate([pending, self._gain(resampler.resample_chunk(np.zeros(0, np.int16), last=True))])
        for start in range(0, len(pending), size):
            yield pending[start : start + size]

    def _tap(self, block: np.ndarray) -> None:
        """Hand a written block to the echo reference. A sink that knows better when a sample leaves (the
        device sink, from its callback) overrides this and taps there."""
        if self.far_end is not None:
            self.far_end.played(block, self.sample_rate)

    def _gain(self, samples: np.ndarray) -> np.ndarray:
        if self.volume == 1.0:
            return samples
        return np.clip(samples.astype(np.float32) * self.volume, -32768, 32767).astype(np.int16)

    async def _write_block(self, block: np.ndarray) -> None:
        raise NotImplementedError


class SimulatedSink(BlockSink):
    """A speaker nobody hears: takes real time to play, so the appliance behaves as on hardware."""

    name = "simulated"

    def __init__(self, sample_rate: int = 24_000, block_ms: int = 20, volume: float = 1.0) -> None:
        super().__init__(sample_rate, block_ms, volume)
        self._next = 0.0

    async def _write_block(self, block: np.ndarray) -> None:
        # Sleep until the block would have left the speaker, without drifting across blocks.
        self._next = max(self._next, trio.current_time()) + len(block) / self.sample_rate
        await trio.sleep_until(self._next)


class MemorySink(BlockSink):
    """Keeps what was played (tests, benchmarks). ``realtime`` paces it like a device."""

    name = "memory"

    def __init__(self, sample_rate: int = 24_000, block_ms: int = 20, realtime: bool = True) -> None:
        super().__init__(sample_rate, block_ms)
        self.realtime = realtime
        self.blocks: list[np.ndarray] = []
        self.first_block_at: float | None = None
        self.block_written = trio.Event()

    async def _write_block(self, block: np.ndarray) -> None:
        if self.first_block_at is None:
            self.first_block_at = trio.current_time()
        self.blocks.append(block.copy())
        self.block_written.set()
        if self.realtime:
            await trio.sleep(len(block) / self.sample_rate)
        else:
            await trio.lowlevel.checkpoint()

    @property
    def audio(self) -> AudioClip:
        data = np.concatenate(self.blocks) if self.blocks else np.zeros(0, dtype=np.int16)
        return AudioClip(data, self.sample_rate)


class WavFileSink(MemorySink):
    """Plays into a WAV file, rewritten (atomically) after each clip so it is always a valid file."""

    name = "file"

    def __init__(self, path: Path, sample_rate: int = 24_000, block_ms: int = 20, realtime: bool = True) -> None:
        super().__init__(sample_rate, block_ms, realtime)
        self.path = path

    async def play(self, audio: Audio, on_level: LevelCallback | None = None) -> None:
        try:
            await super().play(audio, on_level)
        finally:
            write_wav(self.path, self.audio)
