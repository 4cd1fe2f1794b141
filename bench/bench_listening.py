"""Listening: CPU per component, endpointing delay, wake word detection and false accepts, VAD boundaries.

Audio comes from the test fixtures (espeak-ng speech, seeded noises), generated into the fixture cache on
first use. CPU is process CPU time divided by audio time over 10 minutes of speech and noise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time

import numpy as np

from appliance.audio.base import BlockQueue
from appliance.bus import EventBus
from appliance.listening.endpointer import Discarded, Onset, Segment
from appliance.listening.service import ListeningService
from appliance.listening.vad import VoiceActivity, make_detector
from appliance.listening.wakeword import MicroWakeWordDetector
from appliance.settings.audio import AudioConfig
from appliance.settings.listening import ListeningConfig, WakeWordModel
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
    figures.append(
        Figure(f"listening CPU: wake word okay_nabu ({wake.runtime})", _cpu(wake.process, blocks) / seconds, "core")
    )
    service = ListeningService(EventBus(), BlockQueue(), None, ListeningConfig(mode="wake_word"))  # type: ignore[arg-type]
    service._load()
    total = _cpu(service.process_block, blocks) / seconds + capture
    # Informational: no wake-ups, warm caches. The verdict is the live figure (real_capture_figure).
    figures.append(
        Figure(
            "listening CPU offline: capture + energy VAD + endpointer + 1 wake word",
            total,
            "core",
            note=f"over {seconds / 60:.0f} min of audio, back to back; not what the robot spends",
        )
    )
    return figures


class BackendMissing(RuntimeError):
    """The live figure cannot be measured here: an error, never a silent skip."""


def _thread_ticks() -> tuple[int, int]:
    """(main thread, all other threads) CPU ticks of this process, from /proc: the split of the live cost."""
    main = other = 0
    me = str(threading.get_native_id())
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended meanwhile
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        if task == me:
            main += ticks
        else:
            other += ticks
    return main, other


def _canceller():  # type: ignore[no-untyped-def]
    from appliance.audio.echo import build_canceller

    canceller = build_canceller("auto")
    if canceller is None:
        raise BackendMissing("pywebrtc-audio is not installed: the canceller's live cost cannot be measured")
    return canceller


class _Speaker:
    """Stands in for the device sink's PortAudio callback while the robot speaks: every 40 ms (two 20 ms sink
    blocks) it hands the canceller's tap what was played, at the sink's 48 kHz, from its own thread."""

    def __init__(self, canceller) -> None:  # type: ignore[no-untyped-def]
        self.tap = canceller.tap if canceller is not None else None
        self.speaking = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, name="bench-speaker", daemon=True)
        rng = np.random.default_rng(7)
        self._voice = (rng.standard_normal(48_000 * 4) * 3000).astype(np.int16)  # -21 dBFS, loud enough to count

    def _play(self) -> None:
        at, block = 0, 960
        while not self._stop.wait(0.04):
            if self.tap is None or not self.speaking:
                continue
            for _ in range(2):
                self.tap.played(self._voice[at : at + block], 48_000)
                at = (at + block) % (len(self._voice) - block)

    def __enter__(self) -> _Speaker:
        if self.tap is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


def real_capture_figure(seconds: float = 20.0, rounds: int = 3, echo: bool = False) -> list[Figure]:
    """Process CPU (not wall time) of a real PortAudio capture (JACK dummy driver, 48 kHz) into the listening
    service at the default settings, as the robot runs it: idle (audio handed over in batches), then while the
    robot speaks (in smaller batches, ``audio.busy_handover_ms``). ``rounds`` alternations, median reported: the machine is shared.
    The JACK client thread in this process counts; the JACK server (standing in for the kernel's ALSA) does not.
    ``echo``: with the echo canceller in front of the listener (``echo_cancel = "auto"``, the default where
    pywebrtc-audio is installed), fed while the robot speaks with a 48 kHz reference as the device sink does.
    """
    if shutil.which("jackd") is None:
        raise BackendMissing("jackd is not installed (apt: jackd2): the live listening figure cannot be measured")
    import trio

    name = f"appliance-bench-{os.getpid()}"
    os.environ["JACK_NO_START_SERVER"] = "1"
    os.environ["JACK_DEFAULT_SERVER"] = name
    proc = subprocess.Popen(
        ["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", "48000", "-p", "960", "-C", "2", "-P", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import sounddevice

    from appliance.audio.capture import CaptureService
    from appliance.audio.device import DeviceSource, has_device, rescan
    from appliance.events import State, StateChanged

    audio = AudioConfig()
    tick = os.sysconf("SC_CLK_TCK")
    load_before = os.getloadavg()[0]
    try:
        for _ in range(50):
            rescan()
            if has_device("input"):
                break
            time.sleep(0.2)
        else:
            raise BackendMissing("jackd started but PortAudio found no input device on it")

        canceller = _canceller() if echo else None
        speaker = _Speaker(canceller)

        async def run() -> dict[str, list[float]]:
            queue = BlockQueue()
            send, _receive = trio.open_memory_channel(10)
            bus = EventBus()
            service = ListeningService(
                bus, queue, send, ListeningConfig(mode="wake_word"), echo_cancelled=canceller is not None
            )
            source = DeviceSource(
                "system",
                audio.block_ms,
                device_block_ms=audio.device_block_ms,
                relaxed_ms=audio.idle_handover_ms,
                busy_ms=audio.busy_handover_ms,
            )
            capture = CaptureService(source, queue)
            capture.echo = canceller
            shares: dict[str, list[float]] = {"idle": [], "speaking": [], "idle_other": [], "speaking_other": []}
            async with trio.open_nursery() as nursery:
                await nursery.start(capture.run)
                await nursery.start(service.run)
                state = State.IDLE
                for _ in range(rounds):
                    for phase, length in (("idle", seconds), ("speaking", seconds / 2)):
                        new = State.IDLE if phase == "idle" else State.SPEAKING  # a turn on: barge-in heard at once
                        if new != state:
                            bus.publish(StateChanged(state, new))
                            state = new
                        speaker.speaking = phase == "speaking"
                        await trio.sleep(1.0)
                        started, ticks = time.process_time(), _thread_ticks()
                        await trio.sleep(length)
                        shares[phase].append((time.process_time() - started) / length)
                        shares[f"{phase}_other"].append((_thread_ticks()[1] - ticks[1]) / tick / length)
                nursery.cancel_scope.cancel()
            if source.opened != 1:
                raise RuntimeError(f"the input was reopened during the measurement ({source.opened} opens)")
            return shares

        with speaker:
            shares = trio.run(run)
    finally:
        sounddevice._terminate()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        del os.environ["JACK_DEFAULT_SERVER"]
        sounddevice._initialize()
    shared = f"machine shared (load {load_before:.1f} before, {os.getloadavg()[0]:.1f} after)"
    figures = []
    # Without the canceller: the listener's own budget (2% of a core). With it: what the robot pays by default;
    # the canceller has its own budget (issue 20, <= 0.02 core), so the pair's target is the sum.
    targets = ("<= 0.04", "<= 0.04") if echo else ("<= 0.02", "<= 0.02")
    feeder = ", with the bench's stand-in for the sink's callback feeding the reference" if echo else ""
    for (phase, how), target in zip(
        (
            ("idle", f"handed over every {audio.idle_handover_ms} ms"),
            (
                "speaking",
                f"handed over every {audio.busy_handover_ms} ms ({audio.device_block_ms} ms device blocks; "
                f"a barge-in's first block is noticed up to {audio.busy_handover_ms - audio.device_block_ms} ms "
                "later)",
            ),
        ),
        targets,
        strict=True,
    ):
        values = shares[phase]
        spread = ", ".join(f"{v:.4f}" for v in values)
        label = "idle" if phase == "idle" else "while the robot speaks"
        figures.append(
            Figure(
                f"listening CPU live (PortAudio on JACK, wake_word{', echo canceller' if echo else ''}), {label}",
                median(values),
                "core",
                target,
                f"median of {len(values)} x {seconds if phase == 'idle' else seconds / 2:.0f} s [{spread}], {how}; "
                f"JACK/PortAudio threads {median(shares[phase + '_other']):.4f} of it{feeder}; {shared}",
            )
        )
    return figures


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
        figures.append(
            Figure(
                f"endpointing delay median, {label}",
                median(delays) * 1000,
                "ms",
                "<= 300" if not settings else "",
                f"n={len(delays)}",
            )
        )
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
    figures.append(
        Figure(
            "wake word okay_nabu detection rate (6 espeak voices x 3 scenes)",
            100 * found / total,
            "%",
            note=f"{found}/{total}",
        )
    )
    hours = len(negative) / F.RATE / 3600
    for model in ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft"):
        det = MicroWakeWordDetector.from_config([WakeWordModel(model=model)])
        hits = sum(det.process(b) is not None for b in F.blocks(negative))
        figures.append(
            Figure(
                f"wake word {model} false accepts per hour",
                hits / hours,
                "/h",
                note=f"{hits} in {hours * 60:.0f} min speech+noise",
            )
        )
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
            figures.append(
                Figure(
                    f"VAD boundaries within 150 ms: {vad}, {where}",
                    within,
                    f"/{len(errors)}",
                    note=f"worst {max(errors) * 1000:.0f} ms; {cut} of {len(errors)} not sent whole",
                )
            )
    return figures


def main() -> list[Figure]:
    negative = F.negative_set(10.0)
    figures = cpu_figures(negative)
    for echo in (False, True):
        try:
            figures += real_capture_figure(echo=echo)
        except Exception as exc:  # printed as a MISSED verdict: the headline figure could not be measured
            figures.append(
                Figure(
                    f"listening CPU live (PortAudio on JACK{', echo canceller' if echo else ''}): NOT MEASURED",
                    float("nan"),
                    "core",
                    "<= 0.04" if echo else "<= 0.02",
                    f"{type(exc).__name__}: {exc}",
                )
            )
    figures += endpointing_figures()
    figures += wake_figures(negative)
    figures += vad_boundary_figures()
    return figures
