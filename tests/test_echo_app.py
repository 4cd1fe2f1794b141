"""``listening.echo_cancel`` in the running appliance: wiring, the guard's margin, check-config, status, metrics."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.app import build_appliance
from appliance.audio import echo_engines
from appliance.audio.echo_engines import webrtc_available
from appliance.audio.playback import MemorySink
from appliance.cli import EXIT_CONFIG, EXIT_OK, main
from appliance.config import load_config
from appliance.systemd import Notifier
from tests.fakes.control_robot import running_robot

needs_webrtc = pytest.mark.skipif(not webrtc_available(), reason="pywebrtc-audio has no wheel for this platform")


def _config(tmp_path: Path, listening: str, audio: str = 'input = "simulated"\noutput = "simulated"\n') -> Path:
    path = tmp_path / "a.toml"
    path.write_text(f'[audio]\n{audio}[gpio]\npin_factory = "mock"\n[listening]\n{listening}')
    return path


def _build(path: Path):  # type: ignore[no-untyped-def]
    config = load_config(path, environ={})
    return build_appliance(config, sink=MemorySink(), notifier=Notifier({}), handle_signals=False)


@needs_webrtc
def test_webrtc_wires_the_sink_tap_the_capture_hook_and_a_lower_guard_margin(tmp_path: Path) -> None:
    app = _build(_config(tmp_path, 'echo_cancel = "webrtc"\nbarge_in_margin_db = 12\necho_cancel_margin_db = 3\n'))
    assert app.echo is not None and app.echo.backend == "webrtc"
    assert app.sink.far_end is app.echo.tap  # type: ignore[attr-defined]
    capture = app.supervisor.records["capture"].service
    assert getattr(capture, "echo", None) is app.echo or getattr(getattr(capture, "inner", None), "echo", None)
    guard = app.listening.guard
    assert guard.canceller is app.echo
    assert guard.margin_db == 12.0  # until the canceller has converged its residual is unknown
    guard.canceller = SimpleNamespace(converged=True, echo_path_db=0.0)  # type: ignore[assignment]
    assert guard.margin_db == 3.0


def test_off_keeps_the_guard_margin_and_taps_nothing(tmp_path: Path) -> None:
    app = _build(_config(tmp_path, 'echo_cancel = "off"\nbarge_in_margin_db = 12\n'))
    assert app.echo is None
    assert app.sink.far_end is None  # type: ignore[attr-defined]
    assert app.listening.guard.margin_db == 12.0


def test_auto_leaves_a_simulated_microphone_alone(tmp_path: Path) -> None:
    app = _build(_config(tmp_path, 'echo_cancel = "auto"\n'))
    assert app.echo is None  # no speaker reaches a simulated mic: nothing to cancel, no CPU spent


@needs_webrtc
def test_gate_mode_needs_no_canceller(tmp_path: Path) -> None:
    app = _build(_config(tmp_path, 'echo_cancel = "webrtc"\nself_trigger_guard = "gate"\n'))
    assert app.echo is None


def _echo_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("echo:")]
    assert len(lines) == 1
    return lines[0]


def test_check_config_says_which_echo_handling_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(_config(tmp_path, 'echo_cancel = "off"\n')), "check-config"]) == EXIT_OK
    assert _echo_line(capsys) == "echo: no echo canceller (off); self-trigger guard raise, margin 12 dB"
    if webrtc_available():
        assert main(["-c", str(_config(tmp_path, 'echo_cancel = "auto"\n')), "check-config"]) == EXIT_OK
        line = _echo_line(capsys)
        assert line.startswith(
            "echo: webrtc AEC3 (echo_cancel = auto: with a sound-card microphone, backs off when it cannot stay aligned)"
        )
        assert line.endswith("margin 3 dB")


def test_check_config_without_the_wheel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(echo_engines, "webrtc_available", lambda: False)
    assert main(["-c", str(_config(tmp_path, 'echo_cancel = "auto"\n')), "check-config"]) == EXIT_OK
    assert "auto: no livekit/pywebrtc-audio wheel here" in _echo_line(capsys)
    assert main(["-c", str(_config(tmp_path, 'echo_cancel = "webrtc"\n')), "check-config"]) == EXIT_CONFIG
    assert "no wheel" in capsys.readouterr().err


@pytest.mark.parametrize("value", ['"loud"', "1", '""'])
def test_bad_echo_cancel_values_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    assert main(["-c", str(_config(tmp_path, f"echo_cancel = {value}\n")), "check-config"]) == EXIT_CONFIG
    assert "listening.echo_cancel" in capsys.readouterr().err


async def test_status_and_metrics_without_a_canceller(tmp_path: Path) -> None:
    async with running_robot(tmp_path, extra='[listening]\necho_cancel = "off"\n') as robot, robot.client() as api:
        status = (await api.get("/v1/status")).json()
        metrics = (await api.get("/v1/metrics")).text
    assert status["echo"] == {
        "backend": "off",
        "erle_db": None,
        "delay_ms": None,
        "drift_ppm": 0.0,
        "resyncs": 0,
        "ran_dry": 0,
        "late_ms": 0.0,
        "noise_suppression": False,
        "state": "off",
        "reason": None,
    }
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    assert families["appliance_echo_cancel_active"].samples[0].value == 0
    assert "appliance_echo_erle_db" not in families


@needs_webrtc
async def test_status_and_metrics_show_erle_and_delay(tmp_path: Path) -> None:
    async with running_robot(tmp_path, extra='[listening]\necho_cancel = "webrtc"\n') as robot, robot.client() as api:
        canceller = robot.appliance.echo
        # Drive the canceller as the capture path does: a speaker block, then the mic's delayed, quieter copy.
        rng = np.random.default_rng(0)
        far = (np.convolve(rng.standard_normal(16_000 * 4), np.ones(4) / 4, mode="same") * 6000).astype(np.int16)
        mic = (np.concatenate([np.zeros(960), far])[: len(far)] * 0.5).astype(np.int16)
        for start in range(0, len(far), 320):
            canceller.tap.played(far[start : start + 320], 16_000)
            canceller.process(mic[start : start + 320])
        canceller.process(mic[:320])  # a mic block whose reference has not come (only the slack is in hand)
        status = (await api.get("/v1/status")).json()
        metrics = (await api.get("/v1/metrics")).text
        canceller.health.may_back_off = True  # as under auto: the alignment keeps breaking
        for _ in range(3):
            canceller.health.resynced()
        backed_off = (await api.get("/v1/status")).json()["echo"]
        backed_off_metrics = (await api.get("/v1/metrics")).text
    assert backed_off["state"] == "backed_off" and "resynchronised 2 times" in backed_off["reason"]
    gone = {f.name: f for f in text_string_to_metric_families(backed_off_metrics)}
    assert gone["appliance_echo_cancel_active"].samples[0].value == 0
    echo = status["echo"]
    assert echo["backend"] == "webrtc" and echo["state"] == "running" and echo["reason"] is None
    assert echo["erle_db"] is not None and echo["erle_db"] > 10
    assert echo["delay_ms"] == pytest.approx(60.0, abs=5.0)
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    assert families["appliance_echo_cancel_active"].samples[0].value == 1
    assert families["appliance_echo_erle_db"].samples[0].value == echo["erle_db"]
    assert families["appliance_echo_delay_ms"].samples[0].value == echo["delay_ms"]
    assert echo["ran_dry"] == canceller.tap.ran_dry >= 1  # the pairing holds; the status says it ran dry
    assert families["appliance_echo_reference_ran_dry"].samples[0].value == echo["ran_dry"]
