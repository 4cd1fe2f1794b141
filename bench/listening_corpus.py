"""A labelled corpus for listening accuracy, generated (never committed) into ``.cache/listening-corpus``.

Speech comes from espeak-ng (several voices, 130–200 wpm); the labels come from the generation itself: each
clip is trimmed to its first and last sample above -40 dBFS and placed at a known offset, so where speech
starts and ends is exact. Noises are seeded: fan (brown rumble + hum), pink, brown, babble (six overlapping
espeak voices) and music-like (decaying chords). The SNR is measured on the speech's voiced samples, as in
``tests/listening_fixtures.py``, whose speech and noise cache this reuses.

Items:

* ``sentences``: one sentence each, 1.5 to 8 s of unbroken speech (no commas, no pauses longer than espeak's
  word gaps), with 3 s of the room before it (warm) or 0.5 s (cold start: a fresh listener).
* ``wake``: "okay nabu" + 0.1–0.4 s + a command.
* noise alone: ``noise_alone(kind, minutes)``.

Each item is reproducible from its fields; ``subset(items, fraction)`` picks an even sample for quick runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests import listening_fixtures as F

ROOT = Path(__file__).resolve().parent.parent / ".cache" / "listening-corpus"
NOISES = ("fan", "pink", "brown", "babble", "music")
SNRS: tuple[float | None, ...] = (None, 10.0, 5.0, 0.0)  # None: clean
VOICES = ("en-us", "en", "en-us+m3", "en+f3", "en-us+f2", "en+m7", "en-gb-x-rp", "en-us+m1")
RATES = (130, 150, 170, 200)

# Sentences without commas: espeak speaks each as one unbroken stretch (only its short word gaps).
SENTENCES = (
    "what time is it",
    "turn off the lights in the living room",
    "can you tell me how the weather will be tomorrow morning in the city",
    "please remind me to call my sister when I get home from work tonight",
    "I would like to know how many kilometres it is from here to the nearest train station and how long "
    "the walk would take",
    "tell me a long story about a little robot who travelled across the ocean to find the lost island of "
    "the singing birds and came back home",
    "set a timer for twenty minutes and tell me when the pasta is ready to eat",
    "what is the difference between a crocodile and an alligator and which one lives in florida",
)
COMMANDS = (
    "what time is it",
    "turn on the kitchen lights",
    "what is the weather like tomorrow",
    "play some music please",
    "set a timer for ten minutes",
    "how tall is mount everest",
)
WAKE_VOICES = F.WAKE_VOICES  # the ones the bundled okay_nabu model hears in clean speech


@dataclass(frozen=True)
class Item:
    kind: str  # "sentence" or "wake"
    voice: str
    rate: int
    text: str
    noise: str | None = None
    snr: float | None = None
    lead: float = 3.0  # room before the speech (s)
    gap: float = 0.0  # wake items: pause between the wake phrase and the command
    seed: int = 0

    @property
    def condition(self) -> str:
        return "clean" if self.noise is None else f"{self.noise} {self.snr:g} dB"


@dataclass(frozen=True)
class Clip:
    item: Item
    samples: np.ndarray
    spans: tuple[tuple[float, float], ...]  # sentence: (speech,); wake: (wake phrase, command)


def _shaped(seconds: float, seed: int, exponent: float) -> np.ndarray:
    """White noise shaped to a 1/f**exponent power spectrum (pink: 1, brown: 2), flat below 20 Hz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * F.RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / F.RATE), 20.0)
    out = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return out / (F.rms(out) or 1.0) * 3000


def noise(kind: str, seconds: float, seed: int = 0) -> np.ndarray:
    """Float noise at about -21 dBFS RMS."""
    path = ROOT / f"noise-{kind}-{seconds:g}-{seed}.npy"
    if path.exists():
        return np.load(path)
    if kind in ("pink", "brown"):
        data = _shaped(seconds, seed, 1.0 if kind == "pink" else 2.0)
    else:
        data = F.noise(kind, seconds, seed).astype(np.float64)
    ROOT.mkdir(parents=True, exist_ok=True)
    np.save(path, data.astype(np.float32))
    return data


def sentence_items(cold: bool = False) -> list[Item]:
    items = []
    n = 0
    for snr in SNRS:
        for kind in (None,) if snr is None else NOISES:
            for i, text in enumerate(SENTENCES):
                for j in range(3):  # three voice/rate pairs per sentence and condition
                    voice = VOICES[(i * 3 + j) % len(VOICES)]
                    rate = RATES[(i + j) % len(RATES)]
                    items.append(Item("sentence", voice, rate, text, kind, snr, 0.5 if cold else 3.0, seed=n))
                    n += 1
    return items


def wake_items() -> list[Item]:
    items = []
    n = 0
    for snr in SNRS:
        for kind in (None,) if snr is None else NOISES:
            for i, command in enumerate(COMMANDS):
                voice = WAKE_VOICES[(i + n) % len(WAKE_VOICES)]
                gap = (0.1, 0.2, 0.3, 0.4)[i % 4]
                items.append(Item("wake", voice, RATES[i % 3], command, kind, snr, 3.0, gap, seed=n))
                n += 1
    return items


def subset(items: list[Item], fraction: float) -> list[Item]:
    """An even sample (every k-th item) for quick runs."""
    if fraction >= 1:
        return items
    step = max(1, round(1 / max(fraction, 1e-3)))
    return items[::step]


def build(item: Item) -> Clip:
    tail = 2.0
    if item.kind == "sentence":
        parts: list[np.ndarray | float] = [item.lead, F.speak(item.text, item.voice, item.rate), tail]
    else:
        parts = [
            item.lead,
            F.speak("okay nabu", item.voice, 150),
            item.gap,
            F.speak(item.text, item.voice, item.rate),
            tail,
        ]
    scene = F.scene(parts)
    samples = scene.samples
    if item.noise is not None and item.snr is not None:
        background = noise(item.noise, 60.0, seed=1)
        offset = (item.seed * 7919) % (len(background) - len(samples) - 1)
        piece = background[offset : offset + len(samples)]
        samples = F.mix(samples, piece, item.snr)
    return Clip(item, samples, scene.spans)


def noise_alone(kind: str, minutes: float = 10.0) -> np.ndarray:
    """``minutes`` of one noise at the level the 5 dB mixes have (speech peaking at -3 dBFS)."""
    background = noise(kind, 60.0 * minutes, seed=2)
    return np.clip(np.round(background * 0.7), -32768, 32767).astype(np.int16)
