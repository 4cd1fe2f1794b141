"""The benchmarks' verdicts cannot pass by default: a live figure that cannot be measured is MISSED, not skipped."""

from __future__ import annotations

import math

import pytest

from bench import bench_listening
from bench.common import Figure


def test_no_jack_means_the_live_listening_figure_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_listening.shutil, "which", lambda name: None)
    with pytest.raises(bench_listening.BackendMissing, match="jackd"):
        bench_listening.real_capture_figure(seconds=0.1, rounds=1)


def test_a_figure_that_was_not_measured_is_missed_whatever_the_target() -> None:
    assert Figure("live", math.nan, "core", "<= 0.02").verdict == "MISSED"
    assert Figure("live", math.nan, "%", ">= 90").verdict == "MISSED"
    assert Figure("live", 0.01, "core", "<= 0.02").verdict == "OK"


def test_the_listening_bench_reports_a_missing_backend_as_a_missed_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() turns the error into the headline figure with its target, so the summary shows MISSED."""
    monkeypatch.setattr(bench_listening.shutil, "which", lambda name: None)
    for name in ("cpu_figures", "endpointing_figures", "wake_figures", "vad_boundary_figures"):
        monkeypatch.setattr(bench_listening, name, lambda *args: [])
    monkeypatch.setattr(bench_listening.F, "negative_set", lambda minutes: None)
    figures = bench_listening.main()
    live = [f for f in figures if "live" in f.name]
    assert len(live) == 2 and all(f.verdict == "MISSED" and "jackd" in f.note for f in live)
    assert ["echo canceller" in f.name for f in live] == [False, True]  # without, then as the robot runs by default


def test_no_canceller_means_its_live_figure_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the canceller asked for and pywebrtc-audio missing, the figure is an error, not one without it."""
    from appliance.audio import echo_engines

    monkeypatch.setattr(echo_engines, "webrtc_available", lambda: False)
    with pytest.raises(bench_listening.BackendMissing, match="pywebrtc-audio"):
        bench_listening._canceller()


def test_the_echo_bench_shows_the_cold_canceller_s_wake_word_recall_beside_the_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wake word target is measured on a canceller that has heard the robot before (as it runs); its first
    seconds after start are reported too, not left out."""
    from bench import bench_echo

    asked: list[tuple[float, float]] = []

    def trials(above: float, warm: float) -> tuple[int, int, int]:
        asked.append((above, warm))
        return (12, 12, 12) if warm else (1, 12, 12)

    monkeypatch.setattr(bench_echo, "_wake_trials", trials)
    figures = bench_echo.wake_figures()
    assert sorted(asked) == [(0.0, 0.0), (0.0, 20.0), (6.0, 0.0), (6.0, 20.0)]
    warm = [f for f in figures if "after 20 s" in f.name]
    cold = [f for f in figures if "first speech" in f.name]
    assert len(warm) == len(cold) == 2
    assert all(f.target == ">= 90" and f.verdict == "OK" for f in warm)
    assert all(f.value < 10 and "1/12" in f.note for f in cold)
