"""The wake phrase's start and level, found in the levels of the audio kept before its detection; and whose
detection it is."""

from __future__ import annotations

import pytest

from appliance.listening.wake_phrase import find_wake_phrase, wake_refusal

BLOCK = 0.02


def test_the_last_loud_run_is_the_phrase_and_short_gaps_inside_it_are_bridged() -> None:
    # 1 s of room at -60, an earlier word, 1 s of room, then the phrase: 10 blocks, a 5-block dip, 10 blocks.
    levels = [-60.0] * 50 + [-20.0] * 10 + [-60.0] * 50 + [-22.0] * 10 + [-58.0] * 5 + [-22.0] * 10 + [-60.0] * 10
    found = find_wake_phrase(levels, BLOCK, -60.0, 6.0)
    assert found == (110, -22.0)  # the phrase's first block, not the earlier word's; the dip is inside it


def test_a_gap_longer_than_half_a_second_ends_the_phrase() -> None:
    levels = [-60.0] * 20 + [-20.0] * 10 + [-60.0] * 30 + [-25.0] * 10
    assert find_wake_phrase(levels, BLOCK, None, 6.0) == (60, -25.0)


def test_blocks_under_the_floor_and_margin_are_never_the_phrase() -> None:
    levels = [-40.0] * 50 + [-36.0] * 10  # 4 dB over a -40 dB floor: under a 6 dB margin
    assert find_wake_phrase(levels, BLOCK, -40.0, 6.0) is None
    assert find_wake_phrase(levels, BLOCK, -40.0, 3.0) == (50, -36.0)


def test_the_phrase_level_is_its_loud_part_not_its_quiet_edges() -> None:
    levels = [-60.0] * 20 + [-35.0] * 2 + [-20.0] * 16 + [-35.0] * 2
    found = find_wake_phrase(levels, BLOCK, -60.0, 6.0)
    assert found is not None and found[0] == 20 and found[1] == -20.0


@pytest.mark.parametrize(
    ("muted", "playing", "guard", "heard", "reason"),
    [
        (False, False, "raise", False, ""),
        (True, False, "raise", True, "muted"),
        (False, True, "gate", True, "robot speaking (gate)"),
        (False, True, "raise", False, "robot speaking and the mic was not louder than its echo"),
        (False, True, "raise", True, ""),
    ],
)
def test_wake_refusal(muted: bool, playing: bool, guard: str, heard: bool, reason: str) -> None:
    assert wake_refusal(muted, playing, guard, heard) == reason
