"""Sound cards through PortAudio (sounddevice).

The PortAudio callback runs on PortAudio's thread; it only copies the block into a deque and, unless the
listener said it is relaxed, wakes Trio with ``run_sync_soon``, never waiting (when Trio falls behind, audio
is dropped and counted). While relaxed, Trio collects what arrived every ``relaxed_ms`` instead: each wake-up
of the event loop costs more CPU than the listening work it brings. While the listener says busy (the robot
thinks or speaks, nobody else does), the callback wakes Trio every ``busy_ms`` worth of device blocks.
Resampling to 16 kHz (soxr) and cutting into fixed blocks happen on the Trio side. A stream that stops
delivering (USB mic unplugged, sound server gone) raises :class:`DeviceLost`; the capture service reopens it
with backoff.
Playback writes one block at a time from a worker thread so a cancelled turn stops within a block.

PortAudio only scans devices when it is initialised, so a replugged device is found by re-initialising it
(which closes every stream of the process: the sink reopens its own on the next block).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from appliance.audio.base import CAPTURE_RATE, BlockQueue
from appliance.audio.input_bridge import InputBridge

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


def portaudio() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the wheel is there but libportaudio2 is not
        raise AudioDeviceError(f"PortAudio is not available: {exc}") from None
    return sounddevice


_generation = 0  # bumped whenever PortAudio is re-initialised: streams of an older generation are dead


def generation() -> int:
    """How many times PortAudio has been re-initialised: a stream opened before the last time is dead."""
    return _generation


def rescan() -> None:
    """Re-initialise PortAudio so devices plugged in since start are seen. Closes every open stream."""
    global _generation
    sd = portaudio()
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
    sd = portaudio()
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
    sd = portaudio()
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
        relaxed_ms: int = 200,
        busy_ms: int = 80,
    ) -> None:
        self.device = device
        self.block_size = CAPTURE_RATE * block_ms // 1000
        self.block_ms = block_ms
        self.device_block_ms = max(block_ms, device_block_ms or block_ms)
        self.stall_timeout = stall_timeout
        self.relaxed_seconds = max(self.device_block_ms, relaxed_ms) / 1000
        # Device blocks gathered per hand-over while the listener says the robot is busy (thinking, speaking).
        self.busy_blocks = max(1, round(busy_ms / self.device_block_ms))
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
        sd = portaudio()
        index, rate = await self._find()
        resampler = None
        if rate != CAPTURE_RATE:
            import soxr

            resampler = soxr.ResampleStream(rate, CAPTURE_RATE, 1, dtype="int16")
        bridge = InputBridge(self, queue, resampler, trio.lowlevel.current_trio_token())
        try:
            # Raw bytes, not numpy arrays: the callback runs 25 times a second on the audio thread, and building
            # an array there costs more than the copy it makes.
            stream = sd.RawInputStream(
                device=index,
                samplerate=rate,
                channels=1,
                dtype="int16",
                blocksize=rate * self.device_block_ms // 1000,
                callback=bridge.callback,
                finished_callback=bridge.on_finished,
            )
            await trio.to_thread.run_sync(stream.start)
        except sd.PortAudioError as exc:
            raise AudioDeviceError(f"cannot open input {self.device_name!r} at {rate} Hz: {exc}") from None
        self.opened += 1
        log.info("capturing from %s at %d Hz%s", self.device_name, rate, " (resampled)" if resampler else "")
        try:
            task_status.started()
            await self._watch(bridge, queue)
        finally:
            await self._close(stream)

    async def _find(self) -> tuple[int, int]:
        """The device's index and the rate it is opened at (16 kHz when it takes it, else resampled)."""
        sd = portaudio()
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
        return index, rate

    async def _watch(self, bridge: InputBridge, queue: BlockQueue) -> None:
        while True:
            # Relaxed: this loop is what hands the audio over (the callback leaves it to this loop only once it
            # is on the relaxed timer). Otherwise the callback does, and the loop only watches for a stalled
            # device, twice per stall timeout: each wake-up of the event loop costs CPU.
            bridge.watch_hands_over = queue.relaxed
            with trio.move_on_after(self.relaxed_seconds if queue.relaxed else self.stall_timeout / 2):
                await bridge.finished.wait()
            if bridge.finished.is_set():
                raise DeviceLost(f"input {self.device_name!r} stopped")
            bridge.flush()
            now = trio.current_time()
            if bridge.last_arrival < 0:
                bridge.last_arrival = now
            elif now - bridge.last_arrival > self.stall_timeout:
                raise DeviceLost(f"input {self.device_name!r} delivered no audio for {self.stall_timeout:g} s")

    async def _close(self, stream: Any) -> None:
        sd = portaudio()
        # Closing a stream whose device hangs can block for good: give it 2 s, then abandon the thread.
        with trio.CancelScope(shield=True), trio.move_on_after(2.0) as waited:
            try:
                await trio.to_thread.run_sync(stream.close, abandon_on_cancel=True)
            except sd.PortAudioError as exc:
                log.debug("closing input: %s", exc)
        if waited.cancelled_caught:
            log.warning("input %r did not close within 2 s; abandoned", self.device_name)
