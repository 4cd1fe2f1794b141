"""Listening wired into the whole appliance: wake word → utterance → turn; the text wake word wrapper."""

from __future__ import annotations

import numpy as np
import trio
import trio.testing

from appliance.app import build_appliance
from appliance.audio.base import BlockQueue
from appliance.audio.playback import MemorySink
from appliance.config import AppConfig
from appliance.events import TurnStarted, UtteranceCaptured
from appliance.listening.textwake import TextWakeBrain
from appliance.settings.listening import ListeningConfig, WakeWordConfig
from appliance.systemd import Notifier
from tests import listening_fixtures as F


class GatedSource:
    """A microphone that stays silent until ``go`` is set, then says ``samples`` (virtual-time paced)."""

    name = "gated"
    block_size = 320

    def __init__(self, samples: np.ndarray) -> None:
        self.samples = samples
        self.go = trio.Event()

    async def run(self, queue: BlockQueue, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.go.wait()
        for block in F.blocks(np.concatenate([self.samples, F.silence(30.0)])):
            queue.put_nowait(block)
            await trio.sleep(0.02)
        await trio.sleep_forever()


async def test_wake_word_then_command_starts_a_turn(autojump_clock: trio.testing.MockClock) -> None:
    config = AppConfig(listening=ListeningConfig(mode="wake_word"))
    source = GatedSource(
        F.scene([1.0, F.speak("okay nabu", "en-us"), 0.3, F.speak("what time is it", "en-us"), 1.0]).samples
    )
    appliance = build_appliance(
        config, source=source, sink=MemorySink(realtime=False), notifier=Notifier({}), handle_signals=False
    )
    with appliance.bus.subscribe(UtteranceCaptured, TurnStarted, name="test") as sub:
        async with trio.open_nursery() as nursery:
            await nursery.start(appliance.run)
            source.go.set()
            seen = []
            with trio.fail_after(20):
                async for event in sub:
                    seen.append(event)
                    if isinstance(event, TurnStarted):
                        break
            nursery.cancel_scope.cancel()
    captured = [e for e in seen if isinstance(e, UtteranceCaptured)]
    assert captured and captured[0].source == "wake_word" and captured[0].duration > 1.5
    assert appliance.listening.wake_detections == 1


def test_text_wake_word_wraps_the_brain() -> None:
    config = AppConfig(listening=ListeningConfig(mode="wake_word", wake_word=WakeWordConfig(engine="text")))
    appliance = build_appliance(config, sink=MemorySink(), notifier=Notifier({}), handle_signals=False)
    assert isinstance(appliance.brain, TextWakeBrain) and appliance.conversation.brain is appliance.brain
    plain = build_appliance(AppConfig(), sink=MemorySink(), notifier=Notifier({}), handle_signals=False)
    assert not isinstance(plain.brain, TextWakeBrain)
