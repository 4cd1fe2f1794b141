"""``audio.input_file_pace``: a WAV microphone paced by the wall clock, or by the listener (a machine too slow
for real time still hears every block of the file, later; the virtual Pi's wake word check relies on it)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import trio

from appliance.audio.base import BlockQueue
from appliance.audio.sources import WavFileSource
from appliance.config import load_config
from appliance.settings_base import ConfigError

BLOCK = 320


def _wav(path: Path, seconds: float) -> np.ndarray:
    """A ramp of distinct samples, so a lost or reordered block shows."""
    samples = (np.arange(int(seconds * 16_000)) % 30_000 + 1).astype(np.int16)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(samples.astype("<i2").tobytes())
    return samples


async def _heard_by_slow_listener(source: WavFileSource, blocks: int, per_block: float) -> tuple[np.ndarray, int]:
    """What a listener that needs ``per_block`` seconds for each block received, and how many the queue dropped."""
    queue = BlockQueue()  # 2 s, as the appliance has
    heard = []
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, queue)
        for _ in range(blocks):
            heard.append(await queue.get())
            await trio.sleep(per_block)
        nursery.cancel_scope.cancel()
    return np.concatenate(heard), queue.dropped


async def test_listener_pace_hands_every_block_to_a_listener_slower_than_real_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    samples = _wav(tmp_path / "speech.wav", 1.0)
    source = WavFileSource(tmp_path / "speech.wav", lead_in=0.2, pace="listener")
    lead = 10  # 0.2 s of 20 ms blocks
    heard, dropped = await _heard_by_slow_listener(source, lead + 50, per_block=0.1)  # 5x slower than real time
    assert dropped == 0
    assert not heard[: lead * BLOCK].any()
    assert np.array_equal(heard[lead * BLOCK :], samples)


async def test_realtime_pace_loses_blocks_to_the_same_slow_listener(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    samples = _wav(tmp_path / "speech.wav", 1.0)
    source = WavFileSource(tmp_path / "speech.wav", lead_in=0.2)
    heard, dropped = await _heard_by_slow_listener(source, 10 + 50, per_block=0.1)
    assert dropped > 0
    assert not np.array_equal(heard[10 * BLOCK :], samples)


async def test_listener_pace_then_real_time_silence(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """After the file the room is quiet at the microphone's pace, not a flood of silent blocks."""
    _wav(tmp_path / "speech.wav", 0.2)
    source = WavFileSource(tmp_path / "speech.wav", lead_in=0.0, pace="listener")
    queue = BlockQueue(max_blocks=1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, queue)
        for _ in range(10):  # the file
            await queue.get()
        began = trio.current_time()
        for _ in range(50):  # one second of the room
            await queue.get()
        assert trio.current_time() - began == pytest.approx(1.0, abs=0.05)
        nursery.cancel_scope.cancel()


def test_pace_from_environment_and_bad_values_refused(tmp_path: Path) -> None:
    _wav(tmp_path / "speech.wav", 0.1)
    env = {"APPLIANCE_AUDIO__INPUT": "file", "APPLIANCE_AUDIO__INPUT_FILE": str(tmp_path / "speech.wav")}
    assert load_config(None, environ=env).audio.input_file_pace == "realtime"
    paced = load_config(None, environ={**env, "APPLIANCE_AUDIO__INPUT_FILE_PACE": "listener"})
    assert paced.audio.input_file_pace == "listener"
    with pytest.raises(ConfigError):
        load_config(None, environ={**env, "APPLIANCE_AUDIO__INPUT_FILE_PACE": "fast"})
