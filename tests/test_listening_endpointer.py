"""Endpointer and voice activity, block by block, on synthetic audio (no fixtures needed)."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.listening.endpointer import Discarded, Endpointer, EnergyEndpointer, Onset, Segment
from appliance.listening.vad import VoiceActivity

BLOCK = 320
SEC = 0.02


def tone(db: float, n: int = BLOCK, freq: float = 440.0, start: int = 0) -> np.ndarray:
    amp = 32768 * 10 ** (db / 20) * np.sqrt(2)
    t = (np.arange(n) + start) / 16000
    return np.round(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def feed(ep: Endpointer, pattern: list[tuple[bool, int]]) -> list[tuple[int, object]]:
    """(speech?, blocks) runs → [(block index, result)]; speech blocks are loud tones, others quiet."""
    out, i = [], 0
    for speech, count in pattern:
        for _ in range(count):
            block = tone(-20 if speech else -70, start=i * BLOCK)
            result = ep.process(block, speech)
            if result is not None:
                out.append((i, result))
            i += 1
    return out


def test_utterance_ends_after_silence_and_keeps_preroll() -> None:
    ep = Endpointer(SEC, silence_duration=0.5, min_duration=0.2, preroll=0.3)
    results = feed(ep, [(False, 50), (True, 40), (False, 30)])
    kinds = [type(r) for _, r in results]
    assert kinds == [Onset, Segment]
    onset_at, _ = results[0]
    end_at, segment = results[1]
    assert onset_at == 50 and end_at == 50 + 40 + 25 - 1
    assert isinstance(segment, Segment) and segment.reason == "silence"
    # pre-roll (15 blocks) + speech (40) + the silence that ended it (25)
    assert len(segment.samples) == (15 + 40 + 25) * BLOCK


def test_short_sound_is_discarded_and_long_one_is_cut() -> None:
    ep = Endpointer(SEC, silence_duration=0.5, min_duration=0.2, max_duration=2.0)
    short = feed(ep, [(False, 10), (True, 5), (False, 30)])
    assert isinstance(short[-1][1], Discarded) and short[-1][1].reason == "too short"
    long = feed(ep, [(True, 150)])
    cut = [r for _, r in long if isinstance(r, Segment)]
    assert cut and cut[0].reason == "max_duration" and len(cut[0].samples) == 100 * BLOCK


def test_early_endpoint_hands_out_then_supersedes_when_speech_resumes() -> None:
    ep = Endpointer(SEC, silence_duration=0.5, min_duration=0.2, preroll=0.0, early_endpoint=0.2)
    results = [r for _, r in feed(ep, [(True, 30), (False, 15), (True, 20), (False, 40)])]
    kinds = [(type(r).__name__, getattr(r, "reason", None), getattr(r, "resumed", None)) for r in results]
    assert kinds == [
        ("Onset", None, False),
        ("Segment", "early", None),
        ("Onset", None, True),
        ("Segment", "early", None),
    ]
    first, second = results[1], results[3]
    assert isinstance(first, Segment) and isinstance(second, Segment)
    assert len(first.samples) == (30 + 10) * BLOCK
    assert len(second.samples) == (30 + 15 + 20 + 10) * BLOCK  # the whole utterance, pause included


def test_early_endpoint_is_not_sent_twice_when_silence_continues() -> None:
    ep = Endpointer(SEC, silence_duration=0.5, min_duration=0.2, early_endpoint=0.25)
    results = [r for _, r in feed(ep, [(True, 30), (False, 60)])]
    assert [type(r) for r in results] == [Onset, Segment]
    assert not ep.in_speech


def test_push_to_talk_ignores_silence_until_released() -> None:
    ep = Endpointer(SEC, silence_duration=0.2, preroll=0.1)
    feed(ep, [(False, 10)])
    ep.start()
    assert feed(ep, [(False, 50)]) == []
    segment = ep.finish()
    assert segment is not None and segment.forced and segment.reason == "button"
    assert len(segment.samples) == (5 + 50) * BLOCK


def test_armed_start_takes_audio_from_before_the_wake_word_and_times_out() -> None:
    ep = Endpointer(SEC, silence_duration=0.5, preroll=0.3, longest_preroll=1.0)
    feed(ep, [(True, 0), (False, 60)])
    ep.arm(preroll=1.0, timeout=0.5)
    assert ep.in_speech
    results = [r for _, r in feed(ep, [(False, 30)])]
    assert len(results) == 1 and isinstance(results[0], Discarded)
    feed(ep, [(False, 60)])
    ep.arm(preroll=1.0, timeout=2.0)
    results = [r for _, r in feed(ep, [(False, 10), (True, 30), (False, 30)])]
    segment = results[-1]
    assert isinstance(results[0], Onset) and isinstance(segment, Segment)
    assert len(segment.samples) >= (50 + 10 + 30) * BLOCK  # 1 s before the wake word is in it


def test_energy_endpointer_keeps_the_old_interface() -> None:
    ep = EnergyEndpointer(SEC, threshold_db=-40)
    assert ep.process(tone(-70)) is None
    assert isinstance(ep.process(tone(-20)), Onset)
    assert ep.process(tone(-20), extra_threshold_db=30) is None  # quiet relative to a raised threshold
    assert ep.in_speech


def test_noise_floor_raises_threshold_in_a_noisy_room_but_not_below_the_fixed_one() -> None:
    # A fixed margin (min = max): the adaptive margin is tested on its own below.
    vad = VoiceActivity(
        SEC, volume_db_threshold=-40, noise_floor=True, noise_margin_db=10, noise_window=3, min_noise_margin_db=10
    )
    assert vad.threshold_db == -40
    for i in range(200):
        vad.is_speech(tone(-70, start=i * BLOCK))
        vad.learn()
    assert vad.threshold_db == -40  # quiet room: the fixed threshold holds
    for i in range(200):
        vad.is_speech(tone(-30, start=i * BLOCK))
        vad.learn()
    assert vad.floor_db == pytest.approx(-30, abs=0.5)
    assert vad.threshold_db == pytest.approx(-20, abs=0.5)
    assert not vad.is_speech(tone(-25))
    assert vad.is_speech(tone(-15))


def test_steady_noise_without_pauses_is_recognised() -> None:
    vad = VoiceActivity(SEC, volume_db_threshold=-40, noise_window=1.0)
    for i in range(60):
        vad.is_speech(tone(-70, start=i * BLOCK))
        vad.learn()
    for i in range(60):
        assert vad.is_speech(tone(-25, start=i * BLOCK))  # a fan switched on: loud, looks like speech
    assert vad.steady_noise()
    vad.relearn()
    assert not vad.is_speech(tone(-25))


def test_syllable_swing_without_pauses_is_not_taken_for_steady_noise() -> None:
    vad = VoiceActivity(SEC, volume_db_threshold=-40, noise_window=1.0)
    for i in range(60):
        vad.is_speech(tone(-70, start=i * BLOCK))
        vad.learn()
    for i in range(60):  # loud all the time, but swinging 12 dB at 4 Hz like syllables
        db = -20 - 12 * (((i * SEC * 4) % 1) > 0.5)
        vad.is_speech(tone(db, start=i * BLOCK))
    assert vad.modulation_db() > 6
    assert not vad.steady_noise()


def test_margin_adapts_to_how_steady_the_noise_is() -> None:
    rng = np.random.default_rng(0)
    steady = VoiceActivity(SEC)
    flutter = VoiceActivity(SEC)
    for i in range(150):
        steady.is_speech(tone(-30, start=i * BLOCK))
        steady.learn()
        flutter.is_speech(tone(-30 + float(rng.uniform(-6, 6)), start=i * BLOCK))
        flutter.learn()
    assert steady.margin_db == pytest.approx(4.0)
    assert flutter.margin_db > 7
    assert steady.held_margin_db <= steady.margin_db and flutter.held_margin_db == flutter.margin_db


def test_cold_floor_is_the_quiet_part_not_the_talker() -> None:
    vad = VoiceActivity(SEC)
    for i in range(25):  # 0.5 s of the room, then unbroken loud "speech" with short dips
        vad.is_speech(tone(-60, start=i * BLOCK))
    for i in range(200):
        vad.is_speech(tone(-15 if i % 10 else -35, start=i * BLOCK), in_speech=True)
    assert not vad.noise_learned
    assert vad.floor_db is not None and vad.floor_db < -30


def test_a_second_opinion_holds_a_quiet_stretch_open_but_not_forever() -> None:
    ep = Endpointer(SEC, silence_duration=0.5, min_duration=0.2, preroll=0.0)
    feed(ep, [(True, 30)])
    results = [ep.process(tone(-70), False, hold=True) for _ in range(90)]  # 1.8 s the bridge still hears
    closed = [i for i, r in enumerate(results) if isinstance(r, Segment)]
    assert closed and closed[0] >= 24 + ep.max_hold_blocks  # held up to 1 s beyond the 0.5 s of silence
    ep2 = Endpointer(SEC, silence_duration=0.5, min_duration=0.2, preroll=0.0)
    feed(ep2, [(True, 30)])
    results = [ep2.process(tone(-70), False) for _ in range(30)]
    assert isinstance(results[24], Segment)  # without it: closed after 0.5 s


def test_a_command_is_never_too_short() -> None:
    ep = Endpointer(SEC, silence_duration=0.5, min_duration=0.5)
    ep.arm(preroll=0.0, timeout=2.0)
    results = [r for _, r in feed(ep, [(True, 5), (False, 30)])]  # "stop": 0.1 s
    assert isinstance(results[0], Onset) and isinstance(results[-1], Segment)
