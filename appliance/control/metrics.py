"""Counters for ``GET /metrics`` in the Prometheus text format (version 0.0.4).

A handful of series need no client library: counters fed from the bus, gauges read at scrape time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import trio

from appliance.bus import EventBus
from appliance.events import ErrorRaised, ServiceStatus, TurnFinished

STAGES = ("heard", "first_text", "first_audio", "finished")
BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class Histogram:
    def __init__(self, buckets: Iterable[float] = BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


class Metrics:
    def __init__(self) -> None:
        self.turns: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.stages = {stage: Histogram() for stage in STAGES}
        self.responses: Counter[int] = Counter()  # HTTP status codes the API answered, refusals included

    def on_turn(self, event: TurnFinished) -> None:
        self.turns[event.outcome] += 1
        if event.outcome == "failed":
            self.errors["turn"] += 1
        for stage in STAGES:
            value = getattr(event.timings, stage)
            if value is not None and math.isfinite(value) and value >= 0:
                self.stages[stage].observe(value)

    async def follow(self, bus: EventBus, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with bus.subscribe(TurnFinished, ErrorRaised, ServiceStatus, name="control-metrics", size=1024) as sub:
            task_status.started()
            async for event in sub:
                if isinstance(event, TurnFinished):
                    self.on_turn(event)
                elif isinstance(event, ErrorRaised):
                    self.errors[event.where] += 1
                elif isinstance(event, ServiceStatus) and event.status == "failed":
                    self.errors[f"service:{event.service}"] += 1


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Exposition:
    """Builds the text body one metric family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.sample(name, labels, value)

    def sample(self, name: str, labels: dict[str, str], value: float) -> None:
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{text}}} {_num(value)}" if text else f"{name} {_num(value)}")

    def histogram(self, name: str, help_text: str, by_label: str, histograms: dict[str, Histogram]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        for key, h in histograms.items():
            for bound, count in zip(h.buckets, h.counts, strict=True):
                self.sample(f"{name}_bucket", {by_label: key, "le": _num(bound)}, count)
            self.sample(f"{name}_bucket", {by_label: key, "le": "+Inf"}, h.total)
            self.sample(f"{name}_sum", {by_label: key}, h.sum)
            self.sample(f"{name}_count", {by_label: key}, h.total)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
