"""Reproducible listening fixtures: speech from espeak-ng, noises from a seeded generator, labels exact.

Nothing is committed: every clip is rebuilt from its recipe the first time and kept in a cache directory
(``$APPLIANCE_TEST_CACHE`` or ``~/.cache/appliance-tests``) under a name derived from the recipe, so a changed
recipe never reuses a stale file. Used by the tests and by ``bench/bench_listening.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.audio.convert import decode_wav, resample

RATE = 16_000
VERSION = 1
# espeak-ng voices the bundled okay_nabu model reliably hears; fixtures use them all.
WAKE_VOICES = ("en-us", "en", "en-us+m3", "en+f3")
OTHER_VOICES = ("en-us", "en", "en-us+m3", "en+f3", "en-us+f2", "en+m7")

COMMANDS = (
    "what time is it",
    "turn on the kitchen lights",
    "what is the weather like tomorrow",
    "play some music please",
    "set a timer for ten minutes",
    "how tall is mount everest",
)

# Non-wake speech for the false-accept set: everyday sentences, some sounding a little like the wake word.
NEGATIVE_TEXT = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Okay, now we can go to the market and buy some bread.",
    "My neighbour Nadia bought a new bicycle yesterday afternoon.",
    "Can you believe how expensive the tickets were this year?",
    "A new book about the history of Japan arrived on Tuesday.",
    "The weather forecast says it will rain all weekend long.",
    "I think the meeting was moved to half past three.",
    "Please remember to water the plants before you leave.",
    "Nobody knew the answer, so the teacher explained it again.",
    "Okay, let us talk about the budget for next quarter.",
    "The robot vacuum cleaner got stuck under the sofa again.",
    "She said the new restaurant on the corner is really good.",
    "Turn left at the traffic lights and then go straight on.",
    "We watched a documentary about whales and dolphins.",
    "The train to Boston leaves at seven fifteen in the morning.",
    "Hey, do you know where I left my keys this morning?",
)


def cache_dir() -> Path:
    base = os.environ.get("APPLIANCE_TEST_CACHE")
    candidates = [Path(base)] if base else [Path.home() / ".cache" / "appliance-tests"]
    candidates.append(Path(tempfile.gettempdir()) / f"appliance-tests-{os.getuid()}")
    for candidate in candidates:
        path = candidate / f"listening-v{VERSION}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            return path
        except OSError:
            continue
    raise RuntimeError(f"no writable fixture cache directory among {candidates}")


def tools_available() -> bool:
    return shutil.which("espeak-ng") is not None


def _cached(recipe: dict, build) -> np.ndarray:  # type: ignore[no-untyped-def]
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"{recipe.get('kind', 'clip')}-{key}.npy"
    if path.exists():
        return np.load(path)
    data = build().astype(np.int16)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, data)
    tmp.replace(path)  # atomic: a parallel run never reads half a file
    return data


def speak(text: str, voice: str = "en-us", speed: int = 150) -> np.ndarray:
    """espeak-ng speech at 16 kHz int16, leading/trailing silence trimmed, peak at about -3 dBFS."""

    def build() -> np.ndarray:
        wav = subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True
        ).stdout
        clip = decode_wav(wav, name="espeak-ng output")
        samples = resample(clip.samples, clip.sample_rate, RATE).astype(np.float32)
        loud = np.flatnonzero(np.abs(samples) > 300)
        samples = samples[loud[0] : loud[-1] + 1] if loud.size else samples
        peak = float(np.max(np.abs(samples))) or 1.0
        return np.round(samples * (0.7 * 32767 / peak))

    return _cached({"kind": "speech", "text": text, "voice": voice, "speed": speed}, build)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), dtype=np.int16)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64))))) if x.size else 0.0


def noise(kind: str, seconds: float, seed: int = 0) -> np.ndarray:
    """Unit-RMS-ish float noise at 16 kHz: "fan" (brown noise + hum), "music" (chords), "babble" (voices)."""

    def build() -> np.ndarray:
        rng = np.random.default_rng(seed)
        n = int(seconds * RATE)
        t = np.arange(n) / RATE
        if kind == "fan":
            brown = np.cumsum(rng.standard_normal(n))
            brown -= np.convolve(brown, np.ones(801) / 801, mode="same")  # remove the drift, keep the rumble
            out = brown / (np.std(brown) or 1) + 0.3 * np.sin(2 * np.pi * 100 * t) + 0.3 * rng.standard_normal(n)
        elif kind == "music":
            out = np.zeros(n)
            beat = int(0.5 * RATE)
            for start in range(0, n, beat):
                root = 220 * 2 ** (rng.integers(0, 12) / 12)
                seg = slice(start, min(n, start + beat))
                tt = t[seg] - t[start]
                env = np.exp(-3 * tt)
                for ratio in (1, 1.26, 1.5, 2):
                    out[seg] += env * np.sin(2 * np.pi * root * ratio * tt)
        elif kind == "babble":
            out = np.zeros(n)
            for i in range(6):
                pos = int(rng.integers(0, RATE))
                while pos < n:
                    sentence = NEGATIVE_TEXT[int(rng.integers(0, len(NEGATIVE_TEXT)))]
                    clip = speak(sentence, OTHER_VOICES[i % len(OTHER_VOICES)], 160).astype(np.float64)
                    end = min(n, pos + len(clip))
                    out[pos:end] += clip[: end - pos]
                    pos = end + int(rng.integers(RATE // 10, RATE // 2))
        else:
            raise ValueError(f"unknown noise {kind!r}")
        out = out / (rms(out) or 1.0) * 3000  # about -21 dBFS RMS
        return np.round(np.clip(out, -32768, 32767))

    return _cached({"kind": f"noise-{kind}", "seconds": seconds, "seed": seed}, build)


def _noise_gain(speech: np.ndarray, background: np.ndarray, snr_db: float) -> float:
    voiced = speech[np.abs(speech) > 300]
    return (rms(voiced) / (rms(background) or 1.0)) / (10 ** (snr_db / 20))


def mix(speech: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech`` over ``background`` (same length or longer) at the given SNR, measured on the speech part."""
    gain = _noise_gain(speech, background, snr_db)
    out = speech.astype(np.float64) + background[: len(speech)].astype(np.float64) * gain
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def audible_spans(labelled: Labelled, background: np.ndarray, snr_db: float) -> tuple[tuple[float, float], ...]:
    """The labels for ``mix(labelled.samples, background, snr_db)``: each span cut to the speech louder than
    the noise (20 ms frames, 10 ms apart, whose clean level is at least the noise's).

    A word's fading end (the "s" of "lights") can lie well under a fan: no listener and no detector hears it
    there, so a boundary is judged against where the speech can be heard. Whether the whole clean span still
    reaches the recognizer is a separate check against ``labelled.spans``.
    """
    speech = labelled.samples
    noise_level = rms(background[: len(speech)].astype(np.float64) * _noise_gain(speech, background, snr_db))
    spans = []
    for start, end in labelled.spans:
        first, last = int(start * RATE), int(end * RATE)
        loud = [i for i in range(first, last - 319, 160) if rms(speech[i : i + 320].astype(np.float64)) >= noise_level]
        spans.append((loud[0] / RATE, (loud[-1] + 320) / RATE) if loud else (start, start))
    return tuple(spans)


@dataclass(frozen=True)
class Labelled:
    """A recording and where the speech in it really is (seconds)."""

    samples: np.ndarray
    spans: tuple[tuple[float, float], ...]
    wake: int = 0  # how many wake phrases it holds


def scene(parts: list[np.ndarray | float], wake_parts: tuple[int, ...] = ()) -> Labelled:
    """Concatenate speech clips and pauses (floats, seconds); labels come from where each clip lands."""
    pieces, spans, pos = [], [], 0
    for part in parts:
        if isinstance(part, float | int):
            clip = silence(float(part))
        else:
            clip = part
            spans.append((pos / RATE, (pos + len(clip)) / RATE))
        pieces.append(clip)
        pos += len(clip)
    return Labelled(np.concatenate(pieces).astype(np.int16), tuple(spans), len(wake_parts))


def wake_alone(voice: str) -> Labelled:
    return scene([1.0, speak("okay nabu", voice, 150), 2.0], (0,))


def wake_and_command(voice: str, command: str = "what time is it", pause: float = 0.0) -> Labelled:
    parts: list[np.ndarray | float] = [1.0, speak("okay nabu", voice, 150)]
    if pause:
        parts.append(pause)
    parts += [speak(command, voice, 160), 2.0]
    return scene(parts, (0,))


def command_alone(voice: str, command: str = "what time is it") -> Labelled:
    return scene([1.0, speak(command, voice, 160), 2.0])


def negative_set(minutes: float = 10.0) -> np.ndarray:
    """Non-wake speech (several voices, with pauses) plus stretches of fan, music and babble noise."""

    def build() -> np.ndarray:
        rng = np.random.default_rng(7)
        parts, total, i = [], 0, 0
        target = int(minutes * 60 * RATE)
        while total < target:
            if i % 5 == 4:
                kind = ("fan", "music", "babble")[(i // 5) % 3]
                clip = (noise(kind, 20.0, seed=i) * 0.5).astype(np.int16)
            else:
                text = NEGATIVE_TEXT[i % len(NEGATIVE_TEXT)]
                voice = OTHER_VOICES[i % len(OTHER_VOICES)]
                clip = speak(text, voice, int(rng.integers(130, 190)))
                clip = np.concatenate([clip, silence(float(rng.uniform(0.3, 1.5)))])
            parts.append(clip)
            total += len(clip)
            i += 1
        return np.concatenate(parts)[:target]

    return _cached({"kind": "negative", "minutes": minutes}, build)


def blocks(samples: np.ndarray, block: int = 320) -> list[np.ndarray]:
    pad = (-len(samples)) % block
    if pad:
        samples = np.concatenate([samples, np.zeros(pad, dtype=np.int16)])
    return [samples[i : i + block] for i in range(0, len(samples), block)]
