"""End to end on the real PortAudio path (JACK's dummy driver): the robot's speaker port is wired straight into
its own microphone port, so the mic hears exactly what the robot says. With echo cancellation on, the robot
talking does not interrupt itself; a user's voice (a second output port into the same mic) does."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import trio

from appliance.audio.base import AudioClip, BlockQueue
from appliance.audio.capture import CaptureService
from appliance.audio.echo import FarEndTap, WebRtcEchoCanceller
from appliance.audio.echo_engines import webrtc_available
from appliance.bus import EventBus
from appliance.events import OutputLevel, SpeechStarted
from appliance.listening.service import ListeningService
from appliance.settings.listening import ListeningConfig
from tests import listening_fixtures as F
from tests.test_listening_device import Jack, jack  # noqa: F401  (the fixture)

pytestmark = [
    pytest.mark.skipif(not webrtc_available(), reason="pywebrtc-audio has no wheel for this platform"),
    pytest.mark.skipif(not F.tools_available(), reason="espeak-ng makes the voices"),
]


def _connect(source: str, destination: str) -> None:
    subprocess.run(["jack_connect", source, destination], check=True, env=os.environ, capture_output=True, timeout=10)


def _voice(text: str, voice: str, gain: float) -> AudioClip:
    return AudioClip((F.speak(text, voice, 160).astype(np.float32) * gain).astype(np.int16), 16_000)


async def test_the_robot_does_not_interrupt_itself_but_a_user_does(jack: Jack) -> None:  # noqa: F811
    from appliance.audio.device import DeviceSource
    from appliance.audio.device_sink import DeviceSink

    bus = EventBus()
    robot = DeviceSink(device="system")  # PortAudio:out_0
    user = DeviceSink(device="system")  # PortAudio:out_1
    tap = FarEndTap()
    robot.far_end = tap
    canceller = WebRtcEchoCanceller(tap)
    queue = BlockQueue(max_blocks=1000)
    capture = CaptureService(DeviceSource(device="system", block_ms=20, device_block_ms=40), queue, bus)
    capture.echo = canceller
    utterances_send, _utterances = trio.open_memory_channel[object](10)
    listening = ListeningService(
        bus,
        queue,
        utterances_send,
        ListeningConfig(mode="always"),
        20,
        echo_cancelled=True,  # type: ignore[arg-type]
    )
    listening.guard.canceller = canceller
    robot_says = _voice(" ".join(F.NEGATIVE_TEXT[:2]), "en-us+m3", 0.5)
    user_says = _voice("stop, wait a moment please", "en+f3", 0.5)

    def level(db: float) -> None:
        bus.publish(OutputLevel(db))

    with bus.subscribe(SpeechStarted, name="test", size=100) as started:
        async with robot.open(), user.open(), trio.open_nursery() as nursery:
            await nursery.start(capture.run)
            await nursery.start(listening.run)
            await trio.to_thread.run_sync(_connect, "PortAudio:out_0", "PortAudio:in_0")  # the robot hears itself
            await trio.to_thread.run_sync(_connect, "PortAudio:out_1", "PortAudio:in_0")  # and the user
            await trio.sleep(1.0)  # the listener's noise floor
            with trio.fail_after(60):  # a hang guard, not a timing check
                await robot.play(robot_says, level)
                await trio.sleep(0.5)
            self_interruptions = []
            while True:
                try:
                    self_interruptions.append(started.receive.receive_nowait())  # type: ignore[attr-defined]
                except trio.WouldBlock:
                    break
            assert tap.played_samples > 0 and canceller.erle_db is not None

            async def user_barges_in() -> None:
                await trio.sleep(1.5)
                await user.play(user_says)

            with trio.fail_after(60):
                async with trio.open_nursery() as talk:
                    talk.start_soon(user_barges_in)
                    talk.start_soon(robot.play, robot_says, level)
                    event = await started.receive.receive()  # type: ignore[attr-defined]
                    talk.cancel_scope.cancel()  # what the conversation does on a barge-in
            erle = canceller.erle_db
            nursery.cancel_scope.cancel()
    seconds = tap.mic_samples / 16_000
    print(  # the figures behind the README's pairing line (pytest -s)
        f"\nJACK echo: {seconds:.1f} s, ran dry {tap.ran_dry}, paired later {tap.retreats}, resyncs {tap.resyncs}, "
        f"pauses {tap.gaps}, "
        f"delay {canceller.delay_ms} ms, ERLE {erle} dB"
    )
    assert self_interruptions == [], f"the robot interrupted itself (ERLE {erle} dB)"
    assert isinstance(event, SpeechStarted) and event.barge_in
