"""``audio.simulated_speech_after = "never"``: a simulated microphone that stays silent, settable from TOML and env."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio

from appliance.audio.base import AudioClip
from appliance.audio.sources import SimulatedMicrophone
from appliance.config import load_config
from appliance.settings_base import ConfigError


def test_never_from_toml_and_environment(tmp_path: Path) -> None:
    file = tmp_path / "a.toml"
    file.write_text('[audio]\nsimulated_speech_after = "never"\n')
    assert load_config(file, environ={}).audio.simulated_speech_after == "never"
    env = {"APPLIANCE_AUDIO__SIMULATED_SPEECH_AFTER": "never"}
    assert load_config(None, environ=env).audio.simulated_speech_after == "never"
    env = {"APPLIANCE_AUDIO__SIMULATED_SPEECH_AFTER": "0.5"}
    assert load_config(None, environ=env).audio.simulated_speech_after == 0.5
    assert load_config(None, environ={}).audio.simulated_speech_after == 2.0


@pytest.mark.parametrize("bad", ["-1", "soon", "null"])
def test_other_words_and_negative_delays_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        load_config(None, environ={"APPLIANCE_AUDIO__SIMULATED_SPEECH_AFTER": bad})


async def _loudest(mic: SimulatedMicrophone, seconds: float) -> int:
    from appliance.audio.base import BlockQueue

    queue = BlockQueue()
    loudest = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(mic.run, queue)
        with trio.move_on_after(seconds):
            while True:
                block = await queue.get()
                loudest = max(loudest, int(np.abs(block.astype(np.int32)).max(initial=0)))
        nursery.cancel_scope.cancel()
    return loudest


async def test_never_means_silence_and_a_delay_means_the_phrase(autojump_clock: trio.testing.MockClock) -> None:
    phrase = AudioClip((np.ones(1600) * 9000).astype(np.int16), 16_000)
    assert await _loudest(SimulatedMicrophone(phrase, "never"), 5.0) == 0
    assert await _loudest(SimulatedMicrophone(phrase, 0.5), 5.0) > 8000
