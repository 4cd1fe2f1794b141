from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from appliance.audio.base import AudioClip, BlockQueue, level_db
from appliance.audio.convert import AudioFormatError, decode_wav, encode_wav, read_wav, resample
from appliance.audio.playback import MemorySink, WavFileSink


def wav_bytes(samples: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def test_decode_stereo_8bit_and_resample() -> None:
    stereo = np.array([[100, 300], [-100, -300]] * 50, dtype="<i2")
    clip = decode_wav(wav_bytes(stereo, 8000, channels=2))
    assert clip.sample_rate == 8000 and len(clip.samples) == 100 and clip.samples[0] == 200
    eight_bit = np.full(80, 192, dtype=np.uint8)
    assert decode_wav(wav_bytes(eight_bit, 8000, width=1)).samples[0] == 64 << 8
    up = resample(clip.samples, 8000, 16000)
    assert abs(len(up) - 200) <= 2 and up.dtype == np.int16


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a PCM WAV"),
        (b"RIFF\x00\x00\x00\x00WAVEjunk", "not a PCM WAV"),
        (b"hello world, not audio at all", "not a PCM WAV"),
    ],
)
def test_broken_wav_gives_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(AudioFormatError, match=message):
        decode_wav(data, name="upload.wav")


def test_wav_with_no_frames_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "empty.wav"
    file.write_bytes(wav_bytes(np.zeros(0, dtype="<i2"), 16000))
    with pytest.raises(AudioFormatError, match="no audio frames"):
        read_wav(file)
    with pytest.raises(AudioFormatError, match="cannot read"):
        read_wav(tmp_path / "missing.wav")


def test_roundtrip_and_level() -> None:
    tone = (np.sin(np.arange(16000) / 5) * 16384).astype(np.int16)
    clip = decode_wav(encode_wav(AudioClip(tone, 16000)))
    assert np.array_equal(clip.samples, tone)
    assert level_db(tone) == pytest.approx(-9.0, abs=0.2)
    assert level_db(np.zeros(10, dtype=np.int16)) == -100.0


def test_odd_length_pcm_from_a_cut_stream_is_trimmed() -> None:
    assert len(AudioClip.from_pcm(b"\x01\x00\x02", 24000).samples) == 1


async def test_block_queue_drops_oldest_and_counts() -> None:
    queue = BlockQueue(max_blocks=3)
    for i in range(5):
        queue.put_nowait(np.full(4, i, dtype=np.int16))
    assert queue.dropped == 2
    assert [int((await queue.get())[0]) for _ in range(3)] == [2, 3, 4]

    async def late_put() -> None:
        await trio.sleep(0.01)
        queue.put_nowait(np.full(4, 9, dtype=np.int16))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(late_put)
        assert int((await queue.get())[0]) == 9


async def test_block_queue_hand_over_of_several_blocks_reaches_a_waiting_consumer_whole() -> None:
    """A hand-over puts several blocks at once and wakes the waiting consumer once: it gets every one, in
    order, and is woken again by the next hand-over after it has waited anew."""
    queue = BlockQueue()
    got: list[int] = []

    async def consumer() -> None:
        while len(got) < 5:
            got.append(int((await queue.get())[0]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(3):
            queue.put_nowait(np.full(4, i, dtype=np.int16))
        await trio.testing.wait_all_tasks_blocked()
        assert got == [0, 1, 2] and len(queue) == 0  # all of it taken; the consumer waits again
        for i in (3, 4):
            queue.put_nowait(np.full(4, i, dtype=np.int16))
    assert got == [0, 1, 2, 3, 4]


async def test_sink_stops_within_one_block_when_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    sink = MemorySink(sample_rate=16000, block_ms=20, realtime=True)
    levels: list[float] = []
    with trio.move_on_after(0.105):
        await sink.play(AudioClip(np.full(16000, 1000, dtype=np.int16), 16000), levels.append)
    assert sink.played_samples == 5 * 320  # five 20 ms blocks in 105 ms, then nothing
    assert levels[-1] == -100.0  # the mouth closes when playback stops


async def test_wav_file_sink_is_always_a_whole_file(tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    sink = WavFileSink(out, sample_rate=16000, realtime=False)
    await sink.play(AudioClip(np.full(800, 500, dtype=np.int16), 16000))
    await sink.play(AudioClip(np.full(800, -500, dtype=np.int16), 24000))
    clip = read_wav(out)
    assert clip.sample_rate == 16000 and abs(len(clip.samples) - (800 + 533)) <= 2
    assert not list(tmp_path.glob(".*.tmp"))
