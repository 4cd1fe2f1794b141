"""The sustained level's margin: learned from the room's own windowed means, held, released slowly."""

from __future__ import annotations

import numpy as np

from appliance.listening.sustained import (
    RELEARN_EVERY,
    SUSTAIN_CLEARANCE_DB,
    SUSTAIN_MIN_MARGIN_DB,
    SUSTAIN_RELEASE_DB,
    SustainedLevel,
)


def test_an_even_hiss_gets_the_smallest_margin_a_surging_noise_a_larger_one() -> None:
    even = SustainedLevel(0.02)
    even.learn([-30.0] * 150, -30.0, 10.0)
    assert even.margin_db == SUSTAIN_MIN_MARGIN_DB
    surging = SustainedLevel(0.02)
    levels = [-30.0] * 150
    levels[60:75] = [-25.0] * 15  # one 300 ms surge 5 dB over the floor
    surging.learn(levels, -30.0, 10.0)
    assert surging.margin_db is not None and abs(surging.margin_db - (5.0 + SUSTAIN_CLEARANCE_DB)) < 1e-6


def test_the_highest_surge_is_held_and_released_slowly_never_above_the_per_block_margin() -> None:
    s = SustainedLevel(0.02)
    surge = [-30.0] * 150
    surge[:15] = [-22.0] * 15
    s.learn(surge, -30.0, 10.0)
    assert s.margin_db == 8.0 + SUSTAIN_CLEARANCE_DB
    for _ in range(100):  # 2 s of an even room after it
        s.learn([-30.0] * 150, -30.0, 10.0)
    assert s.margin_db is not None
    assert abs(s.margin_db - (8.0 + SUSTAIN_CLEARANCE_DB - 100 * SUSTAIN_RELEASE_DB)) < 1e-6
    for _ in range(RELEARN_EVERY):  # worked out again every RELEARN_EVERY updates
        s.learn(surge, -30.0, 6.0)
    assert s.margin_db == 6.0  # capped: never stricter than the per-block gate itself


def test_judge_needs_the_mean_the_block_and_a_close_talker() -> None:
    s = SustainedLevel(0.02)
    s.learn([-30.0] * 150, -30.0, 10.0)  # margin 3 dB
    for _ in range(s.blocks):
        s.add(-26.0)  # the mean 4 dB over the floor
    assert s.judge(-26.0, -30.0, True, -40.0)
    assert not s.judge(-28.5, -30.0, True, -40.0)  # this block itself is hardly over the floor
    assert not s.judge(-26.0, -30.0, True, -20.0)  # under the absolute bar
    for _ in range(s.blocks):
        s.add(-15.0)  # a loud talker's mean: 15 dB over the floor
    s.judge(-15.0, -30.0, True, -40.0)
    for _ in range(s.blocks):
        s.add(-26.0)
    assert not s.judge(-26.0, -30.0, True, -40.0)  # this utterance's talker is clear: the gate decides
    s.new_utterance()
    assert s.judge(-26.0, -30.0, True, -40.0)
    assert float(np.round(s.mean_db(), 6)) == -26.0


def test_a_guessed_margin_is_not_held_once_the_room_is_learned() -> None:
    s = SustainedLevel(0.02)
    loud_start = [-30.0] * 50
    loud_start[:15] = [-20.0] * 15
    s.learn(loud_start, -30.0, 12.0, guess=True)  # cold: everything heard so far, a surge in it
    assert s.margin_db == 10.0 + SUSTAIN_CLEARANCE_DB
    s.learn([-30.0] * 150, -30.0, 12.0)  # the first margin from non-speech alone replaces it at once
    assert s.margin_db == SUSTAIN_MIN_MARGIN_DB
