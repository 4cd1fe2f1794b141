"""Listening accuracy: does every spoken sentence and command reach the recognizer whole? (issue 16)

Feeds the generated corpus (``bench/listening_corpus.py``) block by block through a fresh
``ListeningService`` with the default settings (or ``--vad``/``--set`` overrides) and prints:

* sentences delivered whole / cut / lost, clean and at 10/5/0 dB SNR in fan, pink, brown, babble and
  music-like noise; warm (3 s of the room first) and cold (a fresh listener, speech after 0.5 s);
* "okay nabu" + command: of the clips where the wake word was detected, commands lost or cut, and clips
  whose utterance starts after the wake phrase's start;
* endpoint delay after the end of speech (the hand-out of the utterance that holds it; the capture's
  hand-over adds up to 20 ms more), at 10 dB;
* utterances produced by minutes of each noise alone;
* process CPU per audio second of the listener (VAD + endpointer + wake word where used).

``python -m bench listening_accuracy`` runs everything (a few minutes on 2 shared cores);
``LISTENING_BENCH_FRACTION=0.25`` (or ``python -m bench.bench_listening_accuracy --fraction 0.25``) an even
subset. The corpus is generated into ``.cache/listening-corpus`` and the fixture cache on first use.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

from appliance.audio.base import BlockQueue
from appliance.bus import EventBus
from appliance.listening.endpointer import Onset, Segment
from appliance.listening.service import ListeningService
from appliance.settings.listening import ListeningConfig
from bench import listening_corpus as C
from bench.common import Figure, median, percentile
from tests import listening_fixtures as F

BLOCK_S = 0.02
TOLERANCE = 0.02  # s: a span counts as inside an utterance when no more than this of either end is missing


@dataclass
class Heard:
    """What the listener sent for one clip: the final utterances as (audio start, audio end, handed out at)."""

    sent: list[tuple[float, float, float]] = field(default_factory=list)
    superseded: int = 0
    wake: int = 0


def run(samples, config: ListeningConfig, cpu: list[float]) -> Heard:  # type: ignore[no-untyped-def]
    service = ListeningService(EventBus(), BlockQueue(), None, config)  # type: ignore[arg-type]
    service._load()
    heard = Heard()
    started = time.process_time()
    for i, block in enumerate(F.blocks(samples)):
        result = service.process_block(block)
        if result is None:
            continue
        now = (i + 1) * BLOCK_S
        if isinstance(result, Onset) and result.resumed and heard.sent:
            heard.sent.pop()  # the early hand-out is superseded by the whole utterance
            heard.superseded += 1
        elif isinstance(result, Segment):
            heard.sent.append((now - len(result.samples) / F.RATE, now, now))
    cpu[0] += time.process_time() - started
    cpu[1] += len(samples) / F.RATE
    heard.wake = service.wake_detections
    return heard


def verdict(heard: Heard, span: tuple[float, float]) -> tuple[str, float | None]:
    """ "whole" (with the hand-out delay after the span's end), "cut" or "lost"."""
    start, end = span
    overlapping = [s for s in heard.sent if s[0] < end and s[1] > start]
    for a, b, at in overlapping:
        if a <= start + TOLERANCE and b >= end - TOLERANCE:
            return "whole", at - end
    return ("cut" if overlapping else "lost"), None


def config_for(mode: str, overrides: dict[str, object]) -> ListeningConfig:
    return ListeningConfig(mode=mode, **overrides)  # type: ignore[arg-type]


def sentence_figures(fraction: float, overrides: dict[str, object], cpu: list[float]) -> list[Figure]:
    figures = []
    delays: list[float] = []
    for cold in (False, True):
        items = C.subset(C.sentence_items(cold), fraction)
        if cold:
            items = [i for i in items if i.snr in (None, 10.0, 5.0)]
        by_snr: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        worst: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for item in items:
            clip = C.build(item)
            heard = run(clip.samples, config_for("always", overrides), cpu)
            result, delay = verdict(heard, clip.spans[0])
            key = "clean" if item.snr is None else f"{item.snr:g} dB"
            by_snr[key][result] += 1
            by_snr[key]["early"] += heard.superseded > 0
            if result != "whole":
                worst[key][item.noise or "clean"] += 1
            if delay is not None and item.snr == 10.0 and not cold:
                delays.append(delay)
        for key in ("clean", "10 dB", "5 dB", "0 dB"):
            if key not in by_snr:
                continue
            counts = by_snr[key]
            total = counts["whole"] + counts["cut"] + counts["lost"]
            target = {"clean": ">= 100", "10 dB": ">= 97", "5 dB": ">= 90"}.get(key, "")
            where = ", ".join(f"{k} {v}" for k, v in sorted(worst[key].items()))
            figures.append(
                Figure(
                    f"sentences whole, {key}{' (cold start)' if cold else ''}",
                    100 * counts["whole"] / total,
                    "%",
                    target,
                    f"{counts['whole']}/{total}; {counts['cut']} cut, {counts['lost']} lost, "
                    f"{counts['early']} sent early mid-sentence{'; misses: ' + where if where else ''}",
                )
            )
    figures.append(
        Figure(
            "endpoint delay after speech end, median, 10 dB", median(delays) * 1000, "ms", "<= 300", f"n={len(delays)}"
        )
    )
    figures.append(Figure("endpoint delay after speech end, p95, 10 dB", percentile(delays, 95) * 1000, "ms", "<= 500"))
    return figures


def wake_figures(fraction: float, overrides: dict[str, object], cpu: list[float]) -> list[Figure]:
    figures = []
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for item in C.subset(C.wake_items(), fraction):
        clip = C.build(item)
        heard = run(clip.samples, config_for("wake_word", overrides), cpu)
        key = "clean" if item.snr is None else f"{item.snr:g} dB"
        rows[key]["clips"] += 1
        if not heard.wake:
            continue
        rows[key]["detected"] += 1
        result, _ = verdict(heard, clip.spans[1])
        rows[key][result] += 1
        wake_start = clip.spans[0][0]
        holder = [s for s in heard.sent if s[0] < clip.spans[1][1] and s[1] > clip.spans[1][0]]
        if holder and holder[0][0] > wake_start + TOLERANCE:
            rows[key]["wake_cut"] += 1
    for key in ("clean", "10 dB", "5 dB", "0 dB"):
        if key not in rows:
            continue
        r = rows[key]
        detected = r["detected"]
        target = {"clean": "<= 0", "5 dB": "<= 3"}.get(key, "")
        figures.append(
            Figure(
                f"commands lost after a detected wake word, {key}",
                100 * r["lost"] / detected if detected else 0.0,
                "%",
                target,
                f"{r['lost']}/{detected} lost, {r['cut']} cut; wake word detected in {detected}/{r['clips']}",
            )
        )
    cut = sum(r["wake_cut"] for r in rows.values())
    detected = sum(r["detected"] for r in rows.values())
    figures.append(Figure("wake phrase start cut", cut, "clips", "<= 0", f"of {detected} detected"))
    return figures


def runtime_figures(fraction: float) -> list[Figure]:
    """Raw per-invocation okay_nabu probabilities of LiteRT vs the reference (pymicro-wakeword's own TFLite
    build) on the same wake clips, and detections that differ."""
    import numpy as np

    from appliance.listening.wakeword import MicroWakeWordDetector, WakeWordError
    from appliance.settings.listening import WakeWordModel

    def probabilities(runtime: str, samples: np.ndarray) -> tuple[np.ndarray, int]:
        det = MicroWakeWordDetector.from_config([WakeWordModel(model="okay_nabu")], runtime)
        runner = det.models[0].runner
        seen: list[float] = []
        invoke = runner.invoke

        def record(features: np.ndarray) -> float:
            seen.append(invoke(features))
            return seen[-1]

        runner.invoke = record  # type: ignore[method-assign]
        hits = sum(det.process(b) is not None for b in F.blocks(samples))
        return np.array(seen), hits

    worst, flips, clips = 0.0, 0, 0
    try:
        for item in C.subset(C.wake_items(), fraction):
            samples = C.build(item).samples
            ours, ours_hits = probabilities("litert", samples)
            ref, ref_hits = probabilities("pymicro", samples)
            n = min(len(ours), len(ref))
            worst = max(worst, float(np.max(np.abs(ours[:n] - ref[:n]))))
            flips += ours_hits != ref_hits
            clips += 1
    except WakeWordError as exc:
        return [Figure("wake word runtimes: LiteRT vs reference (not measured)", float("nan"), "", note=str(exc))]
    return [
        Figure(
            "wake word runtimes: max |LiteRT - reference| probability",
            worst,
            "",
            note=f"{flips} of {clips} clips detected differently; default runtime auto = the reference",
        )
    ]


def noise_figures(minutes: float, overrides: dict[str, object], cpu: list[float]) -> list[Figure]:
    figures = []
    for kind in C.NOISES:
        heard = run(C.noise_alone(kind, minutes), config_for("always", overrides), cpu)
        figures.append(Figure(f"utterances from {minutes:g} min of {kind} noise alone", len(heard.sent), "", "<= 1"))
    return figures


def main(fraction: float | None = None, overrides: dict[str, object] | None = None) -> list[Figure]:
    fraction = float(os.environ.get("LISTENING_BENCH_FRACTION", "1")) if fraction is None else fraction
    overrides = overrides or {}
    cpu = [0.0, 0.0]
    figures = sentence_figures(fraction, overrides, cpu)
    figures += wake_figures(fraction, overrides, cpu)
    figures += runtime_figures(fraction)
    figures += noise_figures(max(1.0, round(10 * fraction)), overrides, cpu)
    vad = overrides.get("vad", ListeningConfig().vad)
    figures.append(
        Figure(
            f"listener CPU over the corpus (vad={vad}; wake word on wake clips)",
            cpu[0] / cpu[1],
            "core",
            note=f"{cpu[1] / 60:.0f} min of audio, process CPU time, shared machine",
        )
    )
    return figures


if __name__ == "__main__":
    from bench.common import print_figures

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=1.0, help="an even subset of the corpus (0..1]")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a listening setting, e.g. vad=energy (JSON values: early_endpoint=null)",
    )
    args = parser.parse_args()
    import json

    settings: dict[str, object] = {}
    for pair in args.set:
        key, _, value = pair.partition("=")
        try:
            settings[key] = json.loads(value)
        except ValueError:
            settings[key] = value
    print_figures(main(args.fraction, settings))
    sys.exit(0)
