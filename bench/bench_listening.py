"""Listening: CPU per component, endpointing delay, wake word detection and false accepts, VAD boundaries.

Audio comes from the test fixtures (espeak-ng speech, seeded noises), generated into the fixture cache on
first use. CPU is process CPU time divided by audio time over 10 minutes of speech and noise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import numpy as np

from appliance.audio.base import BlockQueue
from appliance.audio.config import AudioConfig
from appliance.bus import EventBus
from appliance.listening.config import ListeningConfig, WakeWordModel
from appliance.listening.endpointer import Discarded, Onset, Segment
from appliance.listening.service import ListeningService
from appliance.listening.vad import VoiceActivity, make_detector
from appliance.listening.wakeword import MicroWakeWordDetector
from bench.common import Figure, median, percentile
from tests import listening_fixtures as F

BLOCK = 320


def _cpu(fn, blocks: list[np.ndarray]) -> float:  # type: ignore[no-untyped-def]
    started = time.process_time()
    for block in blocks:
        fn(block)
    return time.process_time() - started


def _capture_path(audio48: np.ndarray) -> float:
    """The Trio side of DeviceSource for a 48 kHz device: soxr to 16 kHz, cut into blocks, queue, take."""
    import soxr

    resampler = soxr.ResampleStream(48_000, 16_000, 1, dtype="int16")
    queue = BlockQueue(max_blocks=10_000)
    leftover = np.zeros(0, dtype=np.int16)
    started = time.process_time()
    for start in range(0, len(audio48), 960):
        chunk = audio48[start : start + 960].copy()  # what the callback copies
        out = resampler.resample_chunk(chunk)
        samples = np.concatenate([leftover, out]) if leftover.size else out
        usable = len(samples) - len(samples) % BLOCK
        for i in range(0, usable, BLOCK):
            queue.put_nowait(samples[i : i + BLOCK])
        leftover = samples[usable:].copy()
        while len(queue):
            queue._blocks.popleft()
    return time.process_time() - started


def cpu_figures(audio: np.ndarray) -> list[Figure]:
    seconds = len(audio) / F.RATE
    blocks = F.blocks(audio)
    figures = []
    audio48 = np.repeat(audio, 3)  # a 48 kHz device (content does not matter for the cost)
    capture = _capture_path(audio48) / seconds
    figures.append(Figure("listening CPU: capture (48k->16k soxr, blocks, queue)", capture, "core"))
    for kind in ("energy", "micro_vad", "silero"):
        vad = VoiceActivity(0.02, detector=make_detector(kind))
        figures.append(Figure(f"listening CPU: VAD {kind}", _cpu(vad.is_speech, blocks) / seconds, "core"))
    wake = MicroWakeWordDetector.from_config([WakeWordModel(model="okay_nabu")])
    figures.append(Figure(f"listening CPU: wake word okay_nabu ({wake.runtime})", _cpu(wake.process, blocks) / seconds,
                          "core"))
    service = ListeningService(EventBus(), BlockQueue(), None, ListeningConfig(mode="wake_word"))  # type: ignore[arg-type]
    service._load()
    total = _cpu(service.process_block, blocks) / seconds + capture
    figures.append(Figure("listening CPU: capture + energy VAD + endpointer + 1 wake word", total, "core",
                          "<= 0.02", f"over {seconds / 60:.0f} min of audio"))
    return figures


def real_capture_figure(seconds: float = 60.0) -> list[Figure]:
    """Process CPU of a real PortAudio capture (JACK dummy driver, 48 kHz) into the listening service, at the
    default settings: idle (audio handed over in batches), then busy (every device block at once)."""
    if shutil.which("jackd") is None:
        return []
    import trio

    name = f"appliance-bench-{os.getpid()}"
    os.environ["JACK_NO_START_SERVER"] = "1"
    os.environ["JACK_DEFAULT_SERVER"] = name
    proc = subprocess.Popen(
        ["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", "48000", "-p", "960", "-C", "2", "-P", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import sounddevice

    from appliance.audio.capture import CaptureService
    from appliance.audio.device import DeviceSource, has_device, rescan
    from appliance.events import State, StateChanged

    audio = AudioConfig()
    try:
        for _ in range(50):
            rescan()
            if has_device("input"):
                break
            time.sleep(0.2)
        else:
            return []

        async def run() -> tuple[float, float]:
            queue = BlockQueue()
            send, _receive = trio.open_memory_channel(10)
            bus = EventBus()
            service = ListeningService(bus, queue, send, ListeningConfig(mode="wake_word"))
            source = DeviceSource(
                "system", audio.block_ms, device_block_ms=audio.device_block_ms, relaxed_ms=audio.idle_handover_ms
            )
            shares = []
            async with trio.open_nursery() as nursery:
                await nursery.start(CaptureService(source, queue).run)
                await nursery.start(service.run)
                for busy, length in ((False, seconds), (True, seconds / 3)):
                    if busy:  # a turn is on: barge-in must be heard at once
                        bus.publish(StateChanged(State.IDLE, State.SPEAKING))
                    await trio.sleep(1.0)
                    started = time.process_time()
                    await trio.sleep(length)
                    shares.append((time.process_time() - started) / length)
                nursery.cancel_scope.cancel()
            return shares[0], shares[1]

        idle, busy = trio.run(run)
    finally:
        sounddevice._terminate()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        del os.environ["JACK_DEFAULT_SERVER"]
        sounddevice._initialize()
    note = "includes ~0.004 of JACK client overhead ALSA does not have"
    return [
        Figure("listening CPU: real PortAudio capture on JACK + listening (wake word), idle", idle, "core", "<= 0.02",
               note=f"{seconds:.0f} s real time, audio handed over every {audio.idle_handover_ms} ms; {note}"),
        Figure("listening CPU: the same while the robot speaks", busy, "core",
               note=f"{seconds / 3:.0f} s, handed over every {audio.device_block_ms} ms device block"),
    ]


def endpointing_figures() -> list[Figure]:
    """Labelled end of speech -> utterance handed out, counted in blocks, plus the worst-case wait for the
    sound card's hand-over (device_block_ms - block_ms = 20 ms at the defaults)."""
    handover = (AudioConfig().device_block_ms - AudioConfig().block_ms) / 1000
    figures = []
    for label, settings in (("default (early endpoint 0.25 s)", {}), ("early endpoint off", {"early_endpoint": None})):
        delays = []
        for voice in F.OTHER_VOICES:
            for command in F.COMMANDS:
                scene = F.command_alone(voice, command)
                service = ListeningService(EventBus(), BlockQueue(), None, ListeningConfig(**settings))  # type: ignore[arg-type]
                service._load()
                for i, block in enumerate(F.blocks(scene.samples)):
                    if isinstance(service.process_block(block), Segment):
                        delays.append((i + 1) * 0.02 - scene.spans[0][1] + handover)
                        break
        figures.append(Figure(f"endpointing delay median, {label}", median(delays) * 1000, "ms",
                              "<= 300" if not settings else "", f"n={len(delays)}"))
        figures.append(Figure(f"endpointing delay p90, {label}", percentile(delays, 90) * 1000, "ms"))
    return figures


def wake_figures(negative: np.ndarray) -> list[Figure]:
    figures = []
    found = total = 0
    for voice in F.OTHER_VOICES:
        for scene in (F.wake_alone(voice), F.wake_and_command(voice), F.wake_and_command(voice, pause=0.3)):
            det = MicroWakeWordDetector.from_config([WakeWordModel(model="okay_nabu")])
            total += 1
            found += any(det.process(b) is not None for b in F.blocks(scene.samples))
    figures.append(Figure("wake word okay_nabu detection rate (6 espeak voices x 3 scenes)", 100 * found / total, "%",
                          note=f"{found}/{total}"))
    hours = len(negative) / F.RATE / 3600
    for model in ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft"):
        det = MicroWakeWordDetector.from_config([WakeWordModel(model=model)])
        hits = sum(det.process(b) is not None for b in F.blocks(negative))
        figures.append(Figure(f"wake word {model} false accepts per hour", hits / hours, "/h",
                              note=f"{hits} in {hours * 60:.0f} min speech+noise"))
    return figures


def vad_boundary_figures() -> list[Figure]:
    parts: list[np.ndarray | float] = [3.0]
    for text, voice in zip(F.COMMANDS[:4], F.WAKE_VOICES, strict=False):
        parts += [F.speak(text, voice, 160), 1.5]
    scene = F.scene(parts)
    figures = []
    for noise, snr in ((None, None), ("fan", 10), ("music", 10), ("babble", 10), ("fan", 0), ("music", 0)):
        samples, labels = scene.samples, scene.spans
        if noise is not None:
            background = F.noise(noise, len(samples) / F.RATE + 1, seed=3)
            samples = F.mix(samples, background, snr)
            labels = F.audible_spans(scene, background, snr)  # judged where the speech is louder than the noise
        for vad in ("energy", "micro_vad", "silero"):
            config = ListeningConfig(vad=vad, early_endpoint=None)  # type: ignore[arg-type]
            service = ListeningService(EventBus(), BlockQueue(), None, config)  # type: ignore[arg-type]
            service._load()
            onsets: list[float] = []
            ends: list[float] = []
            sent: list[tuple[float, float]] = []  # the audio each utterance carried
            for i, block in enumerate(F.blocks(samples)):
                r = service.process_block(block)
                if isinstance(r, Onset) and not r.resumed:
                    onsets.append(i * 0.02)
                elif isinstance(r, Segment):
                    ends.append((i + 1) * 0.02 - config.silence_duration)
                    sent.append(((i + 1) * 0.02 - len(r.samples) / F.RATE, (i + 1) * 0.02))
                elif isinstance(r, Discarded) and onsets:
                    onsets.pop()
            errors = []
            for start, end in labels:
                near_on = min((abs(o - start) for o in onsets), default=9.9)
                near_end = min((abs(e - end) for e in ends), default=9.9)
                errors.append(max(near_on, near_end))
            cut = sum(not any(a <= start and end <= b for a, b in sent) for start, end in scene.spans)
            within = sum(e <= 0.15 for e in errors)
            where = "clean" if noise is None else f"{noise} {snr} dB"
            figures.append(Figure(f"VAD boundaries within 150 ms: {vad}, {where}", within, f"/{len(errors)}",
                                  note=f"worst {max(errors) * 1000:.0f} ms; {cut} of {len(errors)} not sent whole"))
    return figures


def main() -> list[Figure]:
    negative = F.negative_set(10.0)
    figures = cpu_figures(negative)
    try:
        figures += real_capture_figure()
    except Exception as exc:  # the real-device figure is a bonus; the offline ones stand on their own
        figures.append(Figure("listening CPU: real PortAudio capture (failed)", float("nan"), "core", note=str(exc)))
    figures += endpointing_figures()
    figures += wake_figures(negative)
    figures += vad_boundary_figures()
    return figures
