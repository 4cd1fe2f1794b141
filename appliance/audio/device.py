"""Sound cards through PortAudio (sounddevice).

The PortAudio callback runs on PortAudio's thread; it only copies the block into a deque and, unless the
listener said it is relaxed, wakes Trio with ``run_sync_soon``, never waiting (when Trio falls behind, audio
is dropped and counted). While relaxed, Trio collects what arrived every ``relaxed_ms`` instead: each wake-up
of the event loop costs more CPU than the listening work it brings. Resampling to 16 kHz (soxr) and cutting
into fixed blocks happen on the Trio side. A stream that stops delivering (USB
mic unplugged, sound server gone) raises :class:`DeviceLost`; the capture service reopens it with backoff.
Playback writes one block at a time from a worker thread so a cancelled turn stops within a block.

PortAudio only scans devices when it is initialised, so a replugged device is found by re-initialising it
(which closes every stream of the process: the sink reopens its own on the next block).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from appliance.audio.base import CAPTURE_RATE, Audio, BlockQueue, LevelCallback
from appliance.audio.playback import BlockSink

log = logging.getLogger(__name__)

PROBE_RATES = (16_000, 22_050, 24_000, 44_100, 48_000)


class AudioDeviceError(RuntimeError):
    """No usable sound device (PortAudio missing, no such device, or it refused the format)."""


class DeviceLost(AudioDeviceError):
    """An open device stopped working (unplugged, sound server gone)."""


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    inputs: int
    outputs: int
    default_rate: float
    hostapi: str
    input_rates: tuple[int, ...] = field(default=())
    output_rates: tuple[int, ...] = field(default=())


def _sd() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the wheel is there but libportaudio2 is not
        raise AudioDeviceError(f"PortAudio is not available: {exc}") from None
    return sounddevice


_generation = 0  # bumped whenever PortAudio is re-initialised: streams of an older generation are dead


def rescan() -> None:
    """Re-initialise PortAudio so devices plugged in since start are seen. Closes every open stream."""
    global _generation
    sd = _sd()
    try:
        sd._terminate()
    except sd.PortAudioError:
        pass
    sd._initialize()
    _generation += 1
    log.info("PortAudio re-initialised to rescan devices")


def _rates(sd: Any, index: int, kind: str) -> tuple[int, ...]:
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    found = []
    for rate in PROBE_RATES:
        try:
            check(device=index, samplerate=rate, channels=1, dtype="int16")
            found.append(rate)
        except (sd.PortAudioError, ValueError):
            pass
    return tuple(found)


def list_devices(probe_rates: bool = True) -> list[DeviceInfo]:
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
            input_rates=_rates(sd, i, "input") if probe_rates and d["max_input_channels"] else (),
            output_rates=_rates(sd, i, "output") if probe_rates and d["max_output_channels"] else (),
        )
        for i, d in enumerate(sd.query_devices())
    ]


def find_device(spec: str | int | None, kind: str) -> int:
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


def find_device_rescanning(spec: str | int | None, kind: str) -> int:
    """Like :func:`find_device`, rescanning once when the device is not (or no longer) known."""
    try:
        return find_device(spec, kind)
    except AudioDeviceError:
        rescan()
        return find_device(spec, kind)


def has_device(kind: str) -> bool:
    try:
        find_device(None, kind)
    except AudioDeviceError:
        return False
    return True


def pick_rate(sd: Any, index: int, kind: str, wanted: int) -> int:
    """``wanted`` when the device takes it, else the device's default rate."""
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(device=index, samplerate=wanted, channels=1, dtype="int16")
        return wanted
    except sd.PortAudioError:
        return int(sd.query_devices(index)["default_samplerate"])


class DeviceSource:
    """Captures 16 kHz mono int16 from a sound card (resampling when it only offers other rates).

    ``device_block_ms``: how often PortAudio hands audio over (each hand-over wakes the event loop, the main
    CPU cost of capture; the blocks the listener sees stay ``block_ms``). ``stall_timeout``: no audio for
    this long means the device is gone.
    """

    name = "device"

    def __init__(
        self,
        device: str | int | None = None,
        block_ms: int = 20,
        stall_timeout: float = 1.0,
        max_pending: int = 50,
        device_block_ms: int | None = None,
        relaxed_ms: int = 100,
    ) -> None:
        self.device = device
        self.block_size = CAPTURE_RATE * block_ms // 1000
        self.block_ms = block_ms
        self.device_block_ms = max(block_ms, device_block_ms or block_ms)
        self.stall_timeout = stall_timeout
        self.relaxed_seconds = max(self.device_block_ms, relaxed_ms) / 1000
        self.max_pending = max_pending
        self.overflows = 0  # PortAudio reported input overflow (the device dropped audio)
        self.dropped_callbacks = 0  # Trio was too far behind: blocks dropped in the callback
        self.rate = CAPTURE_RATE
        self.device_name = ""
        self.opened = 0
        self._rescan = False  # PortAudio's device list is stale after a failure: rescan before the next try

    async def run(self, queue: BlockQueue, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._run(queue, task_status)
        except DeviceLost:
            raise  # first try the same device again: a rescan closes every stream of the process
        except AudioDeviceError:
            self._rescan = True  # it could not even be opened: maybe it is known under a new index
            raise

    async def _run(self, queue: BlockQueue, task_status: trio.TaskStatus[None]) -> None:
        sd = _sd()
        if self._rescan:
            await trio.to_thread.run_sync(rescan)
            self._rescan = False
        try:
            index = await trio.to_thread.run_sync(find_device_rescanning, self.device, "input")
            rate = pick_rate(sd, index, "input", CAPTURE_RATE)
            self.device_name = sd.query_devices(index)["name"]
        except sd.PortAudioError as exc:
            raise AudioDeviceError(f"input device {self.device!r}: {exc}") from None
        self.rate = rate
        resampler = None
        if rate != CAPTURE_RATE:
            import soxr

            resampler = soxr.ResampleStream(rate, CAPTURE_RATE, 1, dtype="int16")
        token = trio.lowlevel.current_trio_token()
        arrived: deque[bytes] = deque()  # appended by the audio thread, emptied by Trio
        woken = [False]  # a flush is already scheduled (written by both threads; GIL-atomic)
        last_arrival = [trio.current_time()]
        leftover = np.zeros(0, dtype=np.int16)
        finished = trio.Event()

        def flush() -> None:
            nonlocal leftover
            woken[0] = False
            while arrived:
                block = np.frombuffer(arrived.popleft(), dtype=np.int16)
                if resampler is not None:
                    block = resampler.resample_chunk(block)
                samples = np.concatenate([leftover, block]) if leftover.size else block
                usable = len(samples) - len(samples) % self.block_size
                for start in range(0, usable, self.block_size):
                    queue.put_nowait(samples[start : start + self.block_size])
                leftover = samples[usable:].copy()

        def callback(indata: Any, frames: int, time_info: Any, status: Any) -> None:
            if status.input_overflow:
                self.overflows += 1
            if len(arrived) >= self.max_pending:
                self.dropped_callbacks += 1  # never block the audio thread; drop newest here, queue drops oldest
                return
            arrived.append(bytes(indata))
            last_arrival[0] = -1.0  # "just now": Trio stamps it, the audio thread has no Trio clock
            if queue.relaxed or woken[0]:
                return
            woken[0] = True
            try:
                token.run_sync_soon(flush)
            except trio.RunFinishedError:
                pass

        def on_finished() -> None:
            try:
                token.run_sync_soon(finished.set)
            except trio.RunFinishedError:
                pass

        blocksize = rate * self.device_block_ms // 1000
        try:
            # Raw bytes, not numpy arrays: the callback runs 25 times a second on the audio thread, and building
            # an array there costs more than the copy it makes.
            stream = sd.RawInputStream(
                device=index,
                samplerate=rate,
                channels=1,
                dtype="int16",
                blocksize=blocksize,
                callback=callback,
                finished_callback=on_finished,
            )
            await trio.to_thread.run_sync(stream.start)
        except sd.PortAudioError as exc:
            raise AudioDeviceError(f"cannot open input {self.device_name!r} at {rate} Hz: {exc}") from None
        self.opened += 1
        log.info("capturing from %s at %d Hz%s", self.device_name, rate, " (resampled)" if resampler else "")
        try:
            task_status.started()
            while True:
                # Relaxed: this loop is what hands the audio over. Otherwise the callback does, and the loop
                # only watches for a stalled device.
                with trio.move_on_after(self.relaxed_seconds if queue.relaxed else self.stall_timeout / 4):
                    await finished.wait()
                if finished.is_set():
                    raise DeviceLost(f"input {self.device_name!r} stopped")
                flush()
                now = trio.current_time()
                if last_arrival[0] < 0:
                    last_arrival[0] = now
                elif now - last_arrival[0] > self.stall_timeout:
                    raise DeviceLost(f"input {self.device_name!r} delivered no audio for {self.stall_timeout:g} s")
        finally:
            # Closing a stream whose device hangs can block for good: give it 2 s, then abandon the thread.
            with trio.CancelScope(shield=True), trio.move_on_after(2.0) as waited:
                try:
                    await trio.to_thread.run_sync(stream.close, abandon_on_cancel=True)
                except sd.PortAudioError as exc:
                    log.debug("closing input: %s", exc)
            if waited.cancelled_caught:
                log.warning("input %r did not close within 2 s; abandoned", self.device_name)


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
        if tap is not None:  # exactly what goes to the card, silence after a barge-in cut included
            tap.played(out, self.sample_rate)
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
        sd = _sd()
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
        self._stream, self._generation = stream, _generation
        log.info("playing to %s at %d Hz", sd.query_devices(index)["name"], self.sample_rate)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        self._pending.clear()
        if stream is not None and self._generation == _generation:
            try:
                stream.close()
            except Exception as exc:  # noqa: BLE001  a dead stream can fail to close in many ways; it is gone either way
                log.debug("closing output: %s", exc)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        sd = _sd()
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
        return self._stream is not None and self._generation == _generation and not self._dead

    async def _wait_drained(self, timeout: float) -> None:
        self._drained = drained = trio.Event()
        try:
            with trio.move_on_after(timeout):
                await drained.wait()
        finally:
            self._drained = None

    async def _write_block(self, block: np.ndarray) -> None:
        sd = _sd()
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
