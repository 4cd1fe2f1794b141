"""A figure with its target, and how figures are printed."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    target: str = ""  # e.g. "<= 15", empty when the figure is informational
    note: str = ""

    @property
    def verdict(self) -> str:
        if not self.target:
            return ""
        op, _, bound = self.target.partition(" ")
        limit = float(bound)
        ok = self.value <= limit if op == "<=" else self.value >= limit
        return "OK" if ok else "MISSED"


def print_figures(figures: list[Figure]) -> None:
    for f in figures:
        target = f"target {f.target} {f.unit}" if f.target else ""
        print(f"  {f.name:58} {f.value:10.3f} {f.unit:6} {target:18} {f.verdict:6} {f.note}", flush=True)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    """16-bit mono PCM as a WAV file."""
    import numpy as np

    from appliance.audio.base import AudioClip
    from appliance.audio.convert import encode_wav

    return encode_wav(AudioClip(np.frombuffer(pcm, dtype=np.int16), rate))
