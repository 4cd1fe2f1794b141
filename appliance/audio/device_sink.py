"""The sound card as the robot's speaker: PortAudio in callback mode, reopened when the device fails."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import trio

from appliance.audio.base import Audio, LevelCallback
from appliance.audio.device import (
    AudioDeviceError,
    find_device_rescanning,
    generation,
    pick_rate,
    portaudio,
)
from appliance.audio.echo_reference import callback_time
from appliance.audio.playback import BlockSink

log = logging.getLogger(__name__)


class DeviceSink(BlockSink):
    """Plays through a sound card at its own rate, in callback mode.

    ``_write_block`` appends to a short queue (``queued_blocks`` deep, ~60 ms) that PortAudio's callback
    drains; a cancelled clip clears the queue, so the robot goes quiet within one device block. Callback mode
    also avoids PortAudio's blocking-write path, which corrupts memory on its JACK backend. A device that
    fails is reopened on the next block; if it cannot be, the audio is dropped (the robot goes on without a
    voice instead of crashing the conversation).
    """

    name = "device"

    def __init__(
        self, device: str | int | None = None, block_ms: int = 20, volume: float = 1.0, queued_blocks: int = 3
    ) -> None:
        super().__init__(48_000, block_ms, volume)
        self.device = device
        self.queued_blocks = queued_blocks
        self._stream: Any = None
        self._generation = -1
        self._pending: deque[np.ndarray] = deque()  # appended by Trio, popped by the audio thread
        self._partial: np.ndarray | None = None  # audio-thread only: the rest of a block
        self._drained: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._dead = False
        self.reopened = 0
        self.underruns = 0

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.output_underflow:
            self.underruns += 1
        filled = 0
        out = outdata[:, 0]
        while filled < frames:
            chunk = self._partial
            self._partial = None
            if chunk is None:
                try:
                    chunk = self._pending.popleft()
                except IndexError:
                    break
            take = min(frames - filled, len(chunk))
            out[filled : filled + take] = chunk[:take]
            filled += take
            if take < len(chunk):
                self._partial = chunk[take:]
        out[filled:] = 0
        tap = self.far_end
        if tap is not None:  # exactly what goes to the card, silence after a barge-in cut included, and when
            tap.played(out, self.sample_rate, callback_time(time_info, "outputBufferDacTime"))
        self._wake()

    def _wake(self) -> None:
        # Only when a writer waits: an idle speaker must not wake the event loop 50 times a second.
        drained, token = self._drained, self._token
        if drained is not None and token is not None and not drained.is_set():
            try:
                token.run_sync_soon(drained.set)
            except trio.RunFinishedError:
                pass

    def _on_finished(self) -> None:
        self._dead = True
        self._wake()

    def _open_stream(self) -> None:
        sd = portaudio()
        index = find_device_rescanning(self.device, "output")
        self.sample_rate = pick_rate(sd, index, "output", int(sd.query_devices(index)["default_samplerate"]))
        blocksize = self.sample_rate * self.block_ms // 1000
        stream = sd.OutputStream(
            device=index,
            samplerate=self.sample_rate,
            channels=1,
            dtype="int16",
            blocksize=blocksize,
            callback=self._callback,
            finished_callback=self._on_finished,
        )
        self._dead = False
        stream.start()
        self._stream, self._generation = stream, generation()
        log.info("playing to %s at %d Hz", sd.query_devices(index)["name"], self.sample_rate)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        self._pending.clear()
        if stream is not None and self._generation == generation():
            try:
                stream.close()
            except Exception as exc:  # noqa: BLE001  a dead stream can fail to close in many ways; it is gone either way
                log.debug("closing output: %s", exc)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        sd = portaudio()
        self._token = trio.lowlevel.current_trio_token()
        try:
            await trio.to_thread.run_sync(self._open_stream)
        except sd.PortAudioError as exc:
            raise AudioDeviceError(f"cannot open output {self.device!r}: {exc}") from None
        try:
            yield
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                await trio.to_thread.run_sync(self._close_stream, abandon_on_cancel=True)

    async def play(self, audio: Audio, on_level: LevelCallback | None = None) -> None:
        try:
            await super().play(audio, on_level)
            # let the queued tail play out before returning ("play returns when the clip has been heard")
            while self._pending and self._usable():
                await self._wait_drained(self.block_ms / 1000 * 2)
        except trio.Cancelled:
            self._pending.clear()  # quiet at the next device block
            raise

    def _tap(self, block: np.ndarray) -> None:
        pass  # tapped in the callback, where the samples really leave

    def _usable(self) -> bool:
        return self._stream is not None and self._generation == generation() and not self._dead

    async def _wait_drained(self, timeout: float) -> None:
        self._drained = drained = trio.Event()
        try:
            with trio.move_on_after(timeout):
                await drained.wait()
        finally:
            self._drained = None

    async def _write_block(self, block: np.ndarray) -> None:
        sd = portaudio()
        if not self._usable():
            try:
                await trio.to_thread.run_sync(self._reopen)
            except (sd.PortAudioError, AudioDeviceError) as exc:
                log.warning("output device unavailable, dropping audio: %s", exc)
                await trio.sleep(len(block) / self.sample_rate)
                return
        self._pending.append(block)
        deadline = trio.current_time() + 1.0  # a device that stops pulling audio is dead
        while len(self._pending) > self.queued_blocks:
            await self._wait_drained(self.block_ms / 1000 * 2)
            if trio.current_time() > deadline:
                log.warning("output device stopped taking audio; reopening")
                self._dead = True
                self._pending.clear()
                return

    def _reopen(self) -> None:
        self._close_stream()
        self._open_stream()
        self.reopened += 1
