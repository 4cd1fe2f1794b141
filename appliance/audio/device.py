"""Sound cards through PortAudio (sounddevice).

The PortAudio callback runs on PortAudio's thread; it only copies the block and hands it to Trio with
``run_sync_soon``, never waiting. Playback writes one block at a time from a worker thread so a cancelled
turn stops within a block.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import trio

from appliance.audio.base import CAPTURE_RATE, BlockQueue
from appliance.audio.playback import BlockSink

log = logging.getLogger(__name__)


class AudioDeviceError(RuntimeError):
    """No usable sound device (PortAudio missing, no such device, or it refused the format)."""


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    inputs: int
    outputs: int
    default_rate: float
    hostapi: str


def _sd() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the wheel is there but libportaudio2 is not
        raise AudioDeviceError(f"PortAudio is not available: {exc}") from None
    return sounddevice


def list_devices() -> list[DeviceInfo]:
    sd = _sd()
    apis = sd.query_hostapis()
    return [
        DeviceInfo(
            index=i,
            name=d["name"],
            inputs=d["max_input_channels"],
            outputs=d["max_output_channels"],
            default_rate=d["default_samplerate"],
            hostapi=apis[d["hostapi"]]["name"],
        )
        for i, d in enumerate(sd.query_devices())
    ]


def find_device(spec: str | int | None, kind: str) -> int | None:
    """Resolve a device given as index, name substring, or None (the system default) for ``kind`` in/out."""
    sd = _sd()
    channels = "max_input_channels" if kind == "input" else "max_output_channels"
    if spec is None:
        try:
            return int(sd.query_devices(kind=kind)["index"])
        except (sd.PortAudioError, ValueError, KeyError) as exc:
            raise AudioDeviceError(f"no default {kind} device: {exc}") from None
    devices = sd.query_devices()
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        index = int(spec)
        if 0 <= index < len(devices) and devices[index][channels] > 0:
            return index
        raise AudioDeviceError(f"{kind} device {index} does not exist or has no {kind} channels")
    matches = [i for i, d in enumerate(devices) if spec.lower() in d["name"].lower() and d[channels] > 0]
    if not matches:
        names = ", ".join(d["name"] for d in devices if d[channels] > 0) or "none"
        raise AudioDeviceError(f"no {kind} device matches {spec!r} (available: {names})")
    return matches[0]


def has_device(kind: str) -> bool:
    try:
        find_device(None, kind)
    except AudioDeviceError:
        return False
    return True


class DeviceSource:
    """Captures 16 kHz mono int16 from a sound card (resampling when it only offers other rates)."""

    name = "device"

    def __init__(self, device: str | int | None = None, block_ms: int = 20) -> None:
        self.device = device
        self.block_size = CAPTURE_RATE * block_ms // 1000
        self.block_ms = block_ms
        self.overflows = 0

    async def run(self, queue: BlockQueue, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sd = _sd()
        index = find_device(self.device, "input")
        rate = CAPTURE_RATE
        try:
            sd.check_input_settings(device=index, samplerate=rate, channels=1, dtype="int16")
        except sd.PortAudioError:
            rate = int(sd.query_devices(index)["default_samplerate"])
        resampler = None
        if rate != CAPTURE_RATE:
            import soxr

            resampler = soxr.ResampleStream(rate, CAPTURE_RATE, 1, dtype="int16")
        token = trio.lowlevel.current_trio_token()

        def deliver(block: np.ndarray) -> None:
            if resampler is not None:
                block = resampler.resample_chunk(block)
            queue.put_nowait(block)

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if status.input_overflow:
                self.overflows += 1
            try:
                token.run_sync_soon(deliver, indata[:, 0].copy())
            except trio.RunFinishedError:
                pass

        blocksize = rate * self.block_ms // 1000
        stream = sd.InputStream(
            device=index, samplerate=rate, channels=1, dtype="int16", blocksize=blocksize, callback=callback
        )
        await trio.to_thread.run_sync(stream.start)
        log.info("capturing from %s at %d Hz", sd.query_devices(index)["name"], rate)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(stream.close)


class DeviceSink(BlockSink):
    """Plays through a sound card at its own rate."""

    name = "device"

    def __init__(self, device: str | int | None = None, block_ms: int = 20, volume: float = 1.0) -> None:
        super().__init__(48_000, block_ms, volume)
        self.device = device
        self._stream: Any = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        sd = _sd()
        index = find_device(self.device, "output")
        self.sample_rate = int(sd.query_devices(index)["default_samplerate"])
        self._stream = sd.OutputStream(device=index, samplerate=self.sample_rate, channels=1, dtype="int16")
        await trio.to_thread.run_sync(self._stream.start)
        log.info("playing to %s at %d Hz", sd.query_devices(index)["name"], self.sample_rate)
        try:
            yield
        finally:
            stream, self._stream = self._stream, None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(stream.close)

    async def play(self, audio: Any, on_level: Any = None) -> None:
        try:
            await super().play(audio, on_level)
        except trio.Cancelled:
            # Drop what is still queued in the device so the robot goes quiet now, not after the buffer.
            stream = self._stream
            if stream is not None:
                stream.abort()
                stream.start()
            raise

    async def _write_block(self, block: np.ndarray) -> None:
        await trio.to_thread.run_sync(self._stream.write, block, abandon_on_cancel=True)
