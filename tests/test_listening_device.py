"""Capture that survives: a flaky source, mute closing the mic, and the real sounddevice path on JACK's
real-time dummy backend (no sound card needed), including the server vanishing and coming back."""

from __future__ import annotations

import io
import itertools
import os
import shutil
import signal
import subprocess
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from appliance.audio.base import AudioClip, BlockQueue
from appliance.audio.capture import CaptureService
from appliance.bus import EventBus
from appliance.events import ErrorRaised, MuteRequested, ServiceStatus, State, StateChanged
from appliance.listening.service import ListeningService
from appliance.settings.listening import ListeningConfig


class FlakySource:
    """Fails to open ``failures`` times with PortAudio's own error, then delivers blocks; can be 'unplugged'."""

    name = "flaky"
    block_size = 320

    def __init__(self, failures: int) -> None:
        import sounddevice

        self.error = sounddevice.PortAudioError
        self.failures = failures
        self.attempts = 0
        self.open = False
        self.unplug = trio.Event()

    async def run(self, queue: BlockQueue, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error("Error opening InputStream: Device unavailable [PaErrorCode -9985]")
        self.open = True
        try:
            task_status.started()
            while not self.unplug.is_set():
                queue.put_nowait(np.zeros(self.block_size, dtype=np.int16))
                await trio.sleep(0.02)
            self.unplug = trio.Event()
            raise self.error("Stream is stopped: device disconnected [PaErrorCode -9988]")
        finally:
            self.open = False


async def test_source_that_fails_then_recovers_resumes(autojump_clock: trio.testing.MockClock) -> None:
    bus = EventBus()
    queue = BlockQueue()
    source = FlakySource(failures=3)
    capture = CaptureService(source, queue, bus)
    with bus.subscribe(ServiceStatus, ErrorRaised, name="test") as sub:
        async with trio.open_nursery() as nursery:
            await nursery.start(capture.run)  # ready even though the mic is not there yet
            await trio.sleep(3)
            assert source.open and source.attempts == 4 and len(queue) > 0
            source.unplug.set()  # unplugged: the next attempt works again (replugged)
            await trio.sleep(0.5)
            assert source.open and source.attempts == 5
            queue.clear()
            await trio.sleep(1)
            assert len(queue) >= 40
            nursery.cancel_scope.cancel()
        statuses = []
        while True:
            try:
                statuses.append(sub.receive.receive_nowait())
            except trio.WouldBlock:
                break
    seen = [(e.status, e.error is not None) for e in statuses if isinstance(e, ServiceStatus)]
    assert seen[:4] == [("restarting", True)] * 3 + [("running", False)]
    assert ("restarting", True) in seen[4:] and seen[-1] == ("running", False)
    assert len([e for e in statuses if isinstance(e, ErrorRaised)]) == 2  # once per outage, not per attempt
    assert capture.losses == 4


async def test_mute_closes_the_microphone_and_unmute_reopens_it(autojump_clock: trio.testing.MockClock) -> None:
    bus = EventBus()
    source = FlakySource(failures=0)
    capture = CaptureService(source, BlockQueue(), bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(capture.run)
        assert source.open
        bus.publish(MuteRequested(True))
        await trio.sleep(0.1)
        assert not source.open and capture.losses == 0
        bus.publish(MuteRequested(False))
        await trio.sleep(0.1)
        assert source.open and source.attempts == 2
        nursery.cancel_scope.cancel()


# --- the real PortAudio path on JACK's dummy driver ------------------------------------------------------------

_names = itertools.count()


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so a crashed run leaves no jackd behind."""
    import ctypes

    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Jack:
    """A private jackd (dummy driver: real-time paced, no hardware) that can be stopped and started again."""

    def __init__(self, tmp: Path) -> None:
        self.name = f"appliance-test-{os.getpid()}-{next(_names)}"
        self.log = tmp / "jackd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "jackd",
                    "-n",
                    self.name,
                    "--no-realtime",
                    "-d",
                    "dummy",
                    "-r",
                    "48000",
                    "-p",
                    "960",
                    "-w",
                    "20000",  # us between cycles: its default (21333, for 1024 frames) runs 960 at 94% of real time
                    "-C",
                    "2",
                    "-P",
                    "2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def wait_ready(self, timeout: float = 10.0) -> None:
        from appliance.audio.device import has_device, rescan

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rescan()
            if has_device("input"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"jackd did not come up: {self.log.read_text()[-500:]}")

    def freeze(self, stopped: bool) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP if stopped else signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def jack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    if shutil.which("jackd") is None:
        pytest.fail("jackd is missing: `make deps` installs jackd2 (APT_PACKAGES)")
    server = Jack(tmp_path)
    import sounddevice

    os.environ["JACK_NO_START_SERVER"] = "1"  # never let libjack start a server of its own, now or later
    monkeypatch.setenv("JACK_DEFAULT_SERVER", server.name)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        # PortAudio's JACK backend aborts the process if it is shut down after its server vanished: let go of
        # the server first, then stop it, then come back up without it for the other tests.
        sounddevice._terminate()
        server.stop()
        monkeypatch.undo()
        sounddevice._initialize()


def test_devices_command_lists_the_jack_device_with_its_rates(jack: Jack) -> None:
    from appliance.cli import _devices

    out = io.StringIO()
    with redirect_stdout(out):
        assert _devices() == 0
    listing = out.getvalue()
    assert "system" in listing and "JACK" in listing and "48" in listing


@pytest.mark.slow
async def test_real_capture_resamples_and_comes_back_after_the_device_stalls(jack: Jack) -> None:
    from appliance.audio.device import DeviceSource

    bus = EventBus()
    queue = BlockQueue(max_blocks=1000)
    source = DeviceSource(device="system", block_ms=20, stall_timeout=0.5)
    capture = CaptureService(source, queue, bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(capture.run)
        assert source.rate == 48_000  # JACK runs at 48 kHz; we get 16 kHz blocks from soxr
        await trio.sleep(1.0)
        got = [queue._blocks.popleft() for _ in range(len(queue))]
        assert len(got) >= 25 and {len(b) for b in got} == {320} and got[0].dtype == np.int16
        # The sound server stops delivering (what a USB mic does when pulled): detected, reported, reopened.
        with bus.subscribe(ServiceStatus, name="test") as statuses:
            jack.freeze(True)
            try:
                await trio.sleep(1.5)
            finally:
                jack.freeze(False)
            queue.clear()
            with trio.fail_after(15):
                while capture.opens < 2 or len(queue) < 10:
                    await trio.sleep(0.05)
            seen = []
            while True:
                try:
                    seen.append(statuses.receive.receive_nowait().status)  # type: ignore[attr-defined]
                except trio.WouldBlock:
                    break
        assert "restarting" in seen and capture.losses >= 1
        assert bus.latest(ServiceStatus).status == "running"  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_real_capture_hands_over_in_batches_only_while_the_listener_is_relaxed(jack: Jack) -> None:
    """Idle, the audio comes ``relaxed_ms`` at a time (fewer event-loop wake-ups); while the robot is busy,
    ``busy_ms`` at a time; otherwise every device block (40 ms = two 20 ms blocks) comes as soon as PortAudio
    has it."""
    from appliance.audio.device import DeviceSource

    queue = BlockQueue(max_blocks=1000)
    source = DeviceSource(device="system", block_ms=20, device_block_ms=40, relaxed_ms=200, busy_ms=80)

    async def batches(seconds: float) -> list[int]:
        sizes: list[int] = []
        with trio.move_on_after(seconds):
            while True:
                await queue.get()
                sizes.append(1 + len(queue))  # what came with it, handed over in the same wake-up
                queue.clear()
        return sizes

    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, queue)
        eager = await batches(1.5)
        queue.relaxed = True
        await batches(0.8)  # the switch takes effect when the watch loop next wakes (every half stall timeout)
        relaxed = await batches(2.0)
        queue.relaxed, queue.busy = False, True
        await batches(0.5)
        busy = await batches(2.0)
        queue.busy = False
        await batches(0.3)  # the switch back takes effect at the next device block
        eager_again = await batches(1.0)
        nursery.cancel_scope.cancel()
    assert sorted(eager)[len(eager) // 2] <= 2, eager
    assert sorted(relaxed)[len(relaxed) // 2] >= 8 and len(relaxed) <= 15, relaxed
    assert sorted(busy)[len(busy) // 2] == 4 and len(busy) <= 30, busy  # two device blocks a hand-over
    assert sorted(eager_again)[len(eager_again) // 2] <= 2, eager_again


async def test_listener_relaxes_the_capture_only_while_nothing_is_going_on_and_batches_less_while_busy() -> None:
    queue = BlockQueue()
    service = ListeningService(EventBus(), queue, trio.open_memory_channel[object](10)[0], ListeningConfig())
    service._load()
    loud = (np.sin(np.arange(320) / 3) * 8000).astype(np.int16)
    for _ in range(50):
        service.process_block(np.zeros(320, dtype=np.int16))
        service._relax()
    assert queue.relaxed
    for _ in range(5):
        service.process_block(loud)
        service._relax()
    assert service.endpointer.in_speech and not queue.relaxed  # someone speaks: its end must not wait
    service.endpointer.reset()
    service.process_block(np.zeros(320, dtype=np.int16))
    service._relax()
    assert queue.relaxed
    assert not queue.busy
    await service._command(StateChanged(State.IDLE, State.SPEAKING))
    assert not queue.relaxed  # the robot talks: a barge-in must not wait long
    assert queue.busy  # but its first block may come one device block late
    service.process_block(loud)
    service._relax()
    assert not queue.busy and not service.endpointer.in_speech  # a voice, not yet confirmed: no more batching
    for _ in range(5):
        service.process_block(np.zeros(320, dtype=np.int16))
        service._relax()
    assert queue.busy
    await service._command(StateChanged(State.SPEAKING, State.THINKING))
    assert queue.busy
    await service._command(StateChanged(State.THINKING, State.LISTENING))
    assert not queue.busy and not queue.relaxed


async def test_real_playback_and_cancel_within_a_block(jack: Jack) -> None:
    from appliance.audio.device_sink import DeviceSink

    sink = DeviceSink(device="system", block_ms=20)
    clip = AudioClip((np.sin(np.arange(16000) / 5) * 8000).astype(np.int16), 16000)
    async with sink.open():
        await sink.play(clip)
        assert sink.played_samples >= 47_000  # a second at the device's 48 kHz
        before = sink.played_samples
        with trio.move_on_after(0.2):
            await sink.play(AudioClip(np.zeros(16000 * 5, dtype=np.int16), 16000))
        assert 0 < sink.played_samples - before < 48_000 * 2


async def test_barge_in_on_the_real_sink_stops_within_two_device_blocks(jack: Jack) -> None:
    """Cancelling a clip mid-play (what a barge-in does to the turn's scope) leaves at most two device blocks
    of it to come out: counted in frames PortAudio's callback wrote after the cancel, not in wall time."""
    from appliance.audio.device_sink import DeviceSink

    class CountingSink(DeviceSink):
        def __init__(self) -> None:
            super().__init__(device="system", block_ms=20)
            self.cancelled = False  # set by the test the moment the cancel has gone through; read by the audio thread
            self.frames_before = 0
            self.frames_after = 0
            self.callbacks_after = 0

        def _callback(self, outdata: np.ndarray, frames: int, time_info: object, status: object) -> None:
            super()._callback(outdata, frames, time_info, status)
            audio = int(np.count_nonzero(outdata[:, 0]))  # the clip is a constant, silence is zero
            if self.cancelled:
                self.frames_after += audio
                self.callbacks_after += 1
            else:
                self.frames_before += audio

    sink = CountingSink()
    clip = AudioClip(np.full(16000 * 5, 6000, dtype=np.int16), 16000)  # 5 s, never silent
    async with sink.open():
        block = sink.sample_rate * sink.block_ms // 1000
        for _ in range(3):  # three barge-ins, each mid-clip
            sink.cancelled = False
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sink.play, clip)
                    while sink.frames_before < 10 * block:  # it is really playing
                        await sink._wait_drained(0.1)
                    scope.cancel()
            sink.cancelled = True
            with trio.fail_after(5):  # a hang guard: wait for callbacks, counted, not timed
                while sink.callbacks_after < 10:
                    await trio.sleep(0.02)
            assert 0 < sink.frames_before
            assert sink.frames_after <= 2 * block, (sink.frames_after, block)
            sink.frames_before = sink.frames_after = sink.callbacks_after = 0


def test_the_echo_cancellers_queue_is_batched_like_any_while_the_robot_speaks() -> None:
    """The canceller pairs the speaker's reference on a timeline that hand-overs of two device blocks cannot
    shift (tests/test_echo_pairing.py), so its queue batches as the listener asks."""
    from appliance.audio.echo import CancellingQueue, FarEndTap, WebRtcEchoCanceller

    queue = BlockQueue()
    queue.busy = queue.relaxed = True
    cancelling = CancellingQueue(queue, WebRtcEchoCanceller(FarEndTap()))
    assert cancelling.relaxed and cancelling.busy
