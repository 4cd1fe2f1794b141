"""Echo cancellation (issue 20): the robot talking in a simulated room while the user barges in.

The room: the robot's TTS (espeak-ng) is played by a 48 kHz "speaker" in 20 ms blocks, each handed to the
canceller's far-end tap as the device sink does; the microphone hears it through a synthetic room impulse
response (three rooms: 20, 80 and 200 ms delay; reverberation 0.2 to 0.6 s), at a clock 100 ppm faster,
slower or equal to the speaker's, plus fan noise 35 dB under the echo. The user's speech (other espeak voices)
is mixed in at the echo's level, 6 and 12 dB under it. Everything after the canceller is the real listening
code (energy VAD with noise floor, self-trigger guard with the echo-cancel margin, endpointer, okay_nabu).

Figures: ERLE from 1 s on; barge-in detection rate and the time from the user's first syllable to the onset,
with the canceller and, for comparison, without it (the guard alone, 12 dB margin); false barge-ins and false
wake words in N minutes of robot speech alone (per room; 1 by default, ``BENCH_ECHO_MINUTES=10`` or
``python -m bench echo --minutes=10`` for the full 10); wake word recall while the robot talks against its
recall in a quiet room; CPU of the canceller as process CPU time per second of audio (the machine is shared
by other work: treat it as an upper bound). ``BENCH_ECHO_BINDING=pywebrtc-audio`` runs the fallback binding.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from appliance.audio.base import BlockQueue, level_db
from appliance.audio.convert import to_int16
from appliance.audio.echo import FarEndTap, WebRtcEchoCanceller
from appliance.audio.echo_engines import webrtc_available
from appliance.bus import EventBus
from appliance.listening.endpointer import Onset
from appliance.listening.service import ListeningService
from appliance.listening.wakeword import MicroWakeWordDetector
from appliance.settings.listening import ListeningConfig, WakeWordModel
from bench.common import Figure, median, percentile
from tests import listening_fixtures as F

RATE = F.RATE
BLOCK = 320  # 20 ms at 16 kHz
SPK_RATE = 48_000
SPK_BLOCK = 960  # 20 ms at 48 kHz
LEAD = 0.02  # s: the tap sees a block this long before the microphone's block that ends at the same time
# s: what the devices add to the room's delay (the sink's callback block and queue, the mic's input block); the
# pairing needs the echo to lag the tap, and on real hardware it always does by at least this much.
DEVICE_LATENCY = 0.04
ECHO_RMS = 2000.0  # the robot's echo at the mic, about -24 dBFS RMS
NOISE_BELOW_ECHO_DB = 35.0
DRIVE = float(os.environ.get("BENCH_ECHO_DRIVE", "0.5"))  # loudspeaker soft clipping (0.5: about 2 % at peaks)


@dataclass(frozen=True)
class Room:
    name: str
    delay_ms: float
    rt60: float
    ppm: float  # microphone clock relative to the speaker's
    seed: int


ROOMS = (
    Room("small, 20 ms, +100 ppm", 20, 0.2, 100.0, 1),
    Room("living room, 80 ms, -100 ppm", 80, 0.4, -100.0, 2),
    Room("hall, 200 ms, 0 ppm", 200, 0.6, 0.0, 3),
)


def minutes() -> float:
    for arg in sys.argv:
        if arg.startswith("--minutes="):
            return float(arg.split("=", 1)[1])
    return float(os.environ.get("BENCH_ECHO_MINUTES", "1"))


def parts() -> set[str]:
    """Which parts run (``BENCH_ECHO_PARTS``, default all): alone (robot speech alone: ERLE, false barge-ins
    and wake words, CPU), guard (the same without the canceller), barge, wake, ns (noise suppression on the
    labelled corpus). A 10-minute run of the first on
    a shared machine: ``BENCH_ECHO_PARTS=alone BENCH_ECHO_MINUTES=10``."""
    return set(os.environ.get("BENCH_ECHO_PARTS", "alone,guard,barge,wake,ns").split(","))


def rooms() -> set[str]:
    """Which rooms the robot-alone part runs in (``BENCH_ECHO_ROOMS``: small,living room,hall)."""
    return set(os.environ.get("BENCH_ECHO_ROOMS", "small,living room,hall").split(","))


def binding() -> str | None:
    """Which AEC3 binding runs (``BENCH_ECHO_BINDING``: livekit, pywebrtc-audio; default: the app's choice)."""
    return os.environ.get("BENCH_ECHO_BINDING") or None


def impulse_response(room: Room) -> np.ndarray:
    """Direct path, a few early reflections and an exponentially decaying diffuse tail."""
    rng = np.random.default_rng(room.seed)
    length = int(room.rt60 * RATE)
    t = np.arange(length)
    h = rng.standard_normal(length) * np.exp(-6.9 * t / (room.rt60 * RATE)) * 0.15
    h[0] = 1.0
    for _ in range(6):
        h[int(rng.integers(20, 400))] += float(rng.uniform(-0.5, 0.5))
    h = np.concatenate([np.zeros(int((room.delay_ms / 1000 + DEVICE_LATENCY) * RATE)), h])
    # A small speaker is not linear: a touch of soft clipping happens before the room (applied by the caller).
    return h


def robot_speech(seconds: float) -> np.ndarray:
    """The robot's voice: everyday sentences in one espeak voice with short pauses (float, 16 kHz)."""
    rng = np.random.default_rng(11)
    parts, total, i = [], 0, 0
    while total < seconds * RATE:
        clip = F.speak(F.NEGATIVE_TEXT[i % len(F.NEGATIVE_TEXT)], "en-us+m3", 160).astype(np.float64)
        pause = np.zeros(int(rng.uniform(0.15, 0.6) * RATE))
        parts += [clip, pause]
        total += len(clip) + len(pause)
        i += 1
    return np.concatenate(parts)[: int(seconds * RATE)]


def through_room(far16: np.ndarray, room: Room) -> np.ndarray:
    """What the microphone hears of ``far16`` (float): loudspeaker softness, the room, the clock drift."""
    import soxr

    driven = np.tanh(far16 / 32768.0 * DRIVE) / DRIVE * 32768.0  # mild loudspeaker non-linearity
    echo = np.convolve(driven, impulse_response(room))[: len(far16)]
    if room.ppm:
        # The mic samples the room 1 + ppm times as often as the speaker plays: the same sound spans more
        # microphone samples.
        echo = soxr.resample(echo, RATE, RATE * (1 + room.ppm * 1e-6), quality="HQ")
    return echo * (ECHO_RMS / (F.rms(echo[np.abs(echo) > 0.05 * np.max(np.abs(echo))]) or 1.0))


class Run:
    """One room: the speaker's blocks into the tap (and the guard), the mic's blocks into the canceller and
    the listening code, in the order a real device would deliver them."""

    def __init__(self, room: Room, cancel: bool, wake: bool = False) -> None:
        self.room = room
        self.tap = FarEndTap()
        self.canceller = WebRtcEchoCanceller(self.tap, binding=binding()) if cancel else None
        config = ListeningConfig(mode="always")
        self.service = ListeningService(
            EventBus(),
            BlockQueue(),
            None,
            config,
            20,
            echo_cancelled=cancel,  # type: ignore[arg-type]
        )
        self.service._load()
        if self.canceller is not None:  # wired as the app wires it
            canceller = self.canceller
            self.service.guard.canceller = canceller
        self.wake = MicroWakeWordDetector.from_config([WakeWordModel(model="okay_nabu")]) if wake else None
        self.cpu = 0.0
        self.cleaned: list[np.ndarray] = []
        self.keep = False

    def feed(self, far48: np.ndarray, mic: np.ndarray) -> tuple[list[float], list[float]]:
        """Returns the onset times and the wake word times (s, mic clock, block end)."""
        onsets: list[float] = []
        wakes: list[float] = []
        spk = 0
        speaker_per_mic = SPK_RATE / RATE / (1 + self.room.ppm * 1e-6)
        for start in range(0, len(mic) - BLOCK + 1, BLOCK):
            due = (start + BLOCK + LEAD * RATE) * speaker_per_mic
            while spk + SPK_BLOCK <= due and spk < len(far48):
                block = far48[spk : spk + SPK_BLOCK]
                self.tap.played(block, SPK_RATE)
                self.service.guard.on_output(level_db(block))
                spk += SPK_BLOCK
            block = mic[start : start + BLOCK]
            if self.canceller is not None:
                t0 = time.process_time()
                block = self.canceller.process(block)
                self.cpu += time.process_time() - t0
            if self.keep:
                self.cleaned.append(block)
            result = self.service.process_block(block)
            now = (start + BLOCK) / RATE
            if isinstance(result, Onset) and not result.resumed:
                onsets.append(now)
            if self.wake is not None and self.wake.process(block) is not None:
                wakes.append(now)
        return onsets, wakes


def _scene(room: Room, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2 s of room noise, then the robot talking: (speaker 48 kHz int16, echo at the mic, noise) — floats."""
    import soxr

    lead = np.zeros(2 * RATE)
    far16 = np.concatenate([lead, robot_speech(seconds)])
    far48 = to_int16(soxr.resample(far16, RATE, SPK_RATE, quality="HQ"))
    echo = through_room(far16, room)
    noise = F.noise("fan", len(echo) / RATE + 1, seed=seed)[: len(echo)].astype(np.float64)
    noise *= ECHO_RMS / 10 ** (NOISE_BELOW_ECHO_DB / 20) / (F.rms(noise) or 1.0)
    return far48, echo, noise


def erle_after(mic: np.ndarray, cleaned: np.ndarray, far_active: np.ndarray, start: float) -> float:
    """Echo power in over echo power out, where the robot talks, from ``start`` seconds on."""
    s = int(start * RATE)
    n = min(len(mic), len(cleaned), len(far_active))
    active = far_active[s:n]
    m = mic[s:n][active].astype(np.float64)
    c = cleaned[s:n][active].astype(np.float64)
    return 10 * np.log10((np.mean(m**2) + 1) / (np.mean(c**2) + 1))


def _active(echo: np.ndarray) -> np.ndarray:
    """Samples where the echo is well above the noise (ERLE is measured there only)."""
    env = np.convolve(np.abs(echo), np.ones(320) / 320, mode="same")
    return env > ECHO_RMS * 0.1


def robot_alone(room: Room, mins: float) -> list[Figure]:
    seconds = mins * 60
    far48, echo, noise = _scene(room, seconds, room.seed)
    mic = to_int16(echo + noise)
    run = Run(room, cancel=True, wake=True)
    run.keep = True
    onsets, wakes = run.feed(far48, mic)
    cleaned = np.concatenate(run.cleaned)
    active = _active(echo)
    erle1 = erle_after(mic, cleaned, active, 2.0 + 1.0)
    # ERLE per 10 s window, to see that it holds (drift) and its worst stretch
    windows = []
    for s in range(3, int(len(cleaned) / RATE) - 10, 10):
        part = slice(s * RATE, (s + 10) * RATE)
        windows.append(erle_after(mic[part], cleaned[part], active[part], 0.0))
    base_onsets: list[float] | None = None
    if "guard" in parts():  # the same minutes without the canceller, for comparison
        base_onsets, _ = Run(room, cancel=False).feed(far48, mic)
    audio = len(mic) / RATE
    stats = run.canceller.stats() if run.canceller else None
    return [
        Figure(
            f"ERLE after 1 s, {room.name}", erle1, "dB", ">= 25", f"status says {stats.erle_db if stats else '-'} dB"
        ),
        Figure(
            f"ERLE worst 10 s window over {mins:g} min, {room.name}",
            min(windows) if windows else erle1,
            "dB",
            "",
            f"median {median(windows) if windows else erle1:.1f} dB",
        ),
        Figure(
            f"delay estimate, {room.name}",
            stats.delay_ms if stats and stats.delay_ms else -1,
            "ms",
            "",
            f"room {room.delay_ms:g} ms + devices {DEVICE_LATENCY * 1000:g} ms - resampler; "
            f"drift correction {stats.drift_ppm if stats else 0:+g} ppm",
        ),
        Figure(
            f"false barge-ins in {mins:g} min of robot speech, {room.name}",
            len(onsets),
            "",
            "<= 0",
            f"without the canceller (guard 12 dB): {'-' if base_onsets is None else len(base_onsets)}",
        ),
        Figure(
            f"false wake words in {mins:g} min of robot speech, {room.name}",
            len(wakes),
            "",
            "<= 0",
            "okay_nabu on the cleaned signal",
        ),
        Figure(
            f"echo canceller CPU, {room.name}",
            run.cpu / audio,
            "core",
            "<= 0.02",
            f"process CPU time / audio time; shared machine; {run.canceller.binding if run.canceller else '-'}",
        ),
    ]


def barge_ins(room: Room, level_db_below: float, cancel: bool, trials: int = 8) -> tuple[int, list[float], int]:
    """User commands over the robot's speech at ``level_db_below`` the echo: (detected, delays, false onsets)."""
    spacing = 7.0
    seconds = 3.0 + trials * spacing
    far48, echo, noise = _scene(room, seconds, room.seed + 10)
    user = np.zeros(len(echo))
    rng = np.random.default_rng(int(room.seed * 100 + level_db_below))
    spans = []
    for i in range(trials):
        clip = F.speak(F.COMMANDS[i % len(F.COMMANDS)], F.WAKE_VOICES[i % len(F.WAKE_VOICES)], 160).astype(np.float64)
        clip *= ECHO_RMS * 10 ** (-level_db_below / 20) / (F.rms(clip[np.abs(clip) > 300]) or 1.0)
        start = int((4.0 + i * spacing + rng.uniform(0, 2.0)) * RATE)
        end = min(len(user), start + len(clip))
        user[start:end] += clip[: end - start]
        spans.append((start / RATE, end / RATE))
    mic = to_int16(echo + noise + user)
    onsets, _ = Run(room, cancel).feed(far48, mic)
    detected, delays, false = 0, [], 0
    used = set()
    for start, end in spans:
        hit = next((t for t in onsets if start - 0.02 <= t <= end + 0.1), None)
        if hit is not None:
            detected += 1
            delays.append(hit - start)
            used.add(hit)
    false = sum(1 for t in onsets if t not in used and not any(s - 0.02 <= t <= e + 0.6 for s, e in spans))
    return detected, delays, false


def barge_in_figures() -> list[Figure]:
    figures = []
    for below in (0.0, 6.0, 12.0):
        for cancel in (True, False):
            found = total = false = 0
            delays: list[float] = []
            for room in ROOMS:
                d, dl, f = barge_ins(room, below, cancel)
                found += d
                total += 8
                delays += dl
                false += f
            label = "canceller" if cancel else "guard only (no canceller, 12 dB margin)"
            within = sum(1 for x in delays if x <= 0.3)
            target = ">= 95" if cancel and below == 6.0 else ""
            figures.append(
                Figure(
                    f"barge-in detected within 300 ms, user {-below:+g} dB vs echo, {label}",
                    100 * within / total,
                    "%",
                    target,
                    f"{found}/{total} detected at all; {false} false onsets",
                )
            )
            if delays:
                figures.append(
                    Figure(
                        f"barge-in time from first syllable p50/p90, user {-below:+g} dB, {label}",
                        median(delays) * 1000,
                        "ms",
                        "",
                        f"p90 {percentile(delays, 90) * 1000:.0f} ms",
                    )
                )
    return figures


def wake_figures() -> list[Figure]:
    """okay_nabu said over the robot's speech against the same in a quiet room, at the echo's level and 6 dB
    above it (a user a metre away from a robot whose speaker sits next to its mic is rarely louder).

    The target figures are for a canceller that has heard the robot before (20 s of its speech first: the canceller
    lives as long as the app and keeps what it learned while the robot is quiet); the first seconds after start,
    before the linear filter has learned the room (about 7 s of robot speech), are shown beside them."""
    figures = []
    for warm in (20.0, 0.0):
        for above in (0.0, 6.0):
            talking, quiet, total = _wake_trials(above, warm)
            ratio = 100 * talking / quiet if quiet else 0.0
            when = f"after {warm:g} s of robot speech" if warm else "2 s into the robot's first speech"
            figures.append(
                Figure(
                    f"wake word recall while the robot talks / in a quiet room, user {above:+g} dB vs echo, {when}",
                    ratio,
                    "%",
                    ">= 90" if warm else "",
                    f"{talking}/{total} while talking, {quiet}/{total} quiet (cleaned signal)",
                )
            )
    return figures


def _wake_trials(above: float, warm: float) -> tuple[int, int, int]:
    """(detected while the robot talks, detected in a quiet room, trials) over the rooms and voices."""
    quiet = talking = total = 0
    for room in ROOMS:
        for i, voice in enumerate(F.WAKE_VOICES):
            clip = F.speak("okay nabu", voice, 150).astype(np.float64)
            clip *= ECHO_RMS * 10 ** (above / 20) / (F.rms(clip[np.abs(clip) > 300]) or 1.0)
            far48, echo, noise = _scene(room, warm + 7.0, room.seed + 20 + i)
            user = np.zeros(len(echo))
            at = int((warm + 4.0 + 0.4 * i) * RATE)
            user[at : at + len(clip)] = clip[: len(user) - at]
            for with_robot in (False, True):
                mic = to_int16((echo if with_robot else 0) + noise + user)
                run = Run(room, cancel=True, wake=True)
                _, wakes = run.feed(far48 if with_robot else np.zeros_like(far48), mic)
                hit = any(at / RATE <= t <= at / RATE + len(clip) / RATE + 1.0 for t in wakes)
                if with_robot:
                    talking += hit
                else:
                    quiet += hit
            total += 1
    return talking, quiet, total


def main() -> list[Figure]:
    if not webrtc_available():
        return [Figure("echo cancellation: no WebRTC AEC3 binding (livekit, pywebrtc-audio) on this platform", 0, "")]
    if not F.tools_available():
        return [Figure("echo cancellation: espeak-ng is needed for the simulated room", 0, "")]
    mins = minutes()
    figures: list[Figure] = []
    wanted = parts()
    if "alone" in wanted:
        for room in ROOMS:
            if room.name.split(",")[0] in rooms():
                figures += robot_alone(room, mins)
    if "barge" in wanted:
        figures += barge_in_figures()
    if "wake" in wanted:
        figures += wake_figures()
    if "ns" in wanted:
        figures += noise_suppression_figures()
    return figures


def noise_suppression_figures(fraction: float = 0.1) -> list[Figure]:
    """WebRTC's noise suppressor (``listening.noise_suppression``, level 1) in front of the listener, on the
    labelled corpus (sentences at 10, 5 and 0 dB SNR in five noises): how much it lowers the noise (the 3 s of
    room before the speech) and the speech (the labelled span), and whether the listener still hands each
    sentence over whole. Offline there is no STT to ask: these are the figures it would depend on."""
    import pywebrtc_audio

    from bench import bench_listening_accuracy as A
    from bench import listening_corpus as C

    items = [i for i in C.subset(C.sentence_items(), fraction) if i.snr is not None]
    whole = {False: 0, True: 0}
    noise_drop: list[float] = []
    speech_drop: list[float] = []
    cpu = [0.0, 0.0]
    ns_cpu = audio = 0.0
    for item in items:
        clip = C.build(item)
        audio += len(clip.samples) / RATE
        t0 = time.process_time()
        cleaned = pywebrtc_audio.NoiseSuppressor(RATE, 1, 1).process(clip.samples)
        ns_cpu += time.process_time() - t0
        start, end = clip.spans[0]
        lead = slice(int(0.5 * RATE), int((start - 0.1) * RATE))  # the room, once the suppressor has heard it
        span = slice(int(start * RATE), int(end * RATE))
        raw, out = clip.samples.astype(np.float64), cleaned.astype(np.float64)
        noise_drop.append(10 * np.log10((np.mean(raw[lead] ** 2) + 1) / (np.mean(out[lead] ** 2) + 1)))
        speech_drop.append(10 * np.log10((np.mean(raw[span] ** 2) + 1) / (np.mean(out[span] ** 2) + 1)))
        for ns, samples in ((False, clip.samples), (True, cleaned)):
            heard = A.run(samples, A.config_for("always", {}), cpu)
            whole[ns] += A.verdict(heard, clip.spans[0])[0] == "whole"
    n = len(items)
    return [
        Figure("noise suppression: noise lowered by (median)", median(noise_drop), "dB", "", f"{n} sentences"),
        Figure(
            "noise suppression: speech span lowered by (median)",
            median(speech_drop),
            "dB",
            "",
            "speech + noise; the SNR gain is the difference",
        ),
        Figure(
            "sentences handed over whole, without / with noise suppression",
            100 * whole[True] / n,
            "%",
            "",
            f"{whole[False]}/{n} without, {whole[True]}/{n} with (10/5/0 dB, energy VAD)",
        ),
        Figure("noise suppressor CPU", ns_cpu / audio, "core", "", "process CPU time / audio time; shared machine"),
    ]
