"""Whether a detected wake word is the user's, where its phrase started in the kept audio, and how loud it was said.

The phrase is the last run of loud blocks before the detection (loud: within ``_WAKE_RANGE_DB`` of the kept
audio's loudest, and above the noise floor), with quieter gaps shorter than ``_WAKE_GAP`` bridged.
"""

from __future__ import annotations

from collections.abc import Sequence

_WAKE_GAP = 0.5  # s: a quieter stretch shorter than this inside the wake phrase does not end it
_WAKE_RANGE_DB = 20.0  # dB: the phrase is the blocks within this of its loudest (95th percentile) block


def find_wake_phrase(
    levels: Sequence[float], block_seconds: float, floor_db: float | None, min_margin_db: float
) -> tuple[int, float] | None:
    """(the index of the phrase's first block, its level), or None when no block is loud enough."""
    ordered = sorted(levels)
    peak = ordered[int(0.95 * (len(ordered) - 1))]
    gate = peak - _WAKE_RANGE_DB
    if floor_db is not None:
        gate = max(gate, floor_db + min_margin_db)
    voiced = [i for i, lv in enumerate(levels) if lv >= gate]
    if not voiced:
        return None
    end = start = voiced[-1]
    gap = max(1, round(_WAKE_GAP / block_seconds))
    for i in reversed(voiced[:-1]):
        if start - i > gap:
            break
        start = i
    phrase = sorted(levels[start : end + 1])
    return start, phrase[int(0.9 * (len(phrase) - 1))]


def wake_phrase_back(
    levels: Sequence[float],
    block_seconds: float,
    floor_db: float | None,
    min_margin_db: float,
    preroll: float,
    wake_preroll: float,
) -> tuple[float, float | None]:
    """How far back (s) the utterance starts: the wake phrase's first block plus ``preroll``, never less than
    ``wake_preroll``; and the phrase's level (None when no phrase is found in ``levels``)."""
    found = find_wake_phrase(levels, block_seconds, floor_db, min_margin_db) if len(levels) >= 5 else None
    if found is None:
        return wake_preroll, None
    start, level = found
    return max(wake_preroll, (len(levels) - start) * block_seconds + preroll), level


def wake_refusal(muted: bool, playing: bool, guard_mode: str, heard_the_user: bool) -> str:
    """Why a detection is not the user's ("" when it is): muted, or the robot's own voice set it off."""
    if muted:
        return "muted"
    if playing and guard_mode == "gate":
        return "robot speaking (gate)"
    if playing and not heard_the_user:
        return "robot speaking and the mic was not louder than its echo"
    return ""
