"""The self-trigger guard with a trusted echo canceller in front of the microphone (issue 20): what a voice
must clear while the robot speaks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from appliance.audio.base import BlockQueue, level_db
from appliance.bus import EventBus
from appliance.listening.endpointer import Onset
from appliance.listening.service import ListeningService
from appliance.settings.listening import ListeningConfig

BLOCK = 320  # 20 ms at 16 kHz
ROBOT_DB = -20.0  # what the speaker plays


def _noise(db: float, seed: int) -> np.ndarray:
    block = np.random.default_rng(seed).standard_normal(BLOCK)
    block *= 32768.0 * 10 ** (db / 20) / np.sqrt(np.mean(block**2))
    return np.clip(np.round(block), -32768, 32767).astype(np.int16)


def _service(converged: bool) -> ListeningService:
    service = ListeningService(EventBus(), BlockQueue(), None, ListeningConfig(mode="always"), 20, echo_cancelled=True)  # type: ignore[arg-type]
    service._load()
    service.guard.canceller = SimpleNamespace(converged=converged, echo_path_db=-4.0)  # type: ignore[assignment]
    for i in range(150):  # 3 s of a quiet room: the floor (-70 dBFS) is learned, the threshold is -40 dBFS
        service.process_block(_noise(-70.0, i))
    return service


def _robot_speaks(service: ListeningService, mic_db: float, blocks: int, seed: int) -> list[object]:
    results = []
    for i in range(blocks):
        service.guard.on_output(ROBOT_DB)
        results.append(service.process_block(_noise(mic_db, seed + i)))
    return results


def test_a_trusted_canceller_lets_a_voice_at_the_rooms_threshold_barge_in() -> None:
    service = _service(converged=True)
    assert service.vad is not None and service.vad.threshold_db == pytest.approx(-40.0)
    _robot_speaks(service, -72.0, 100, 1000)  # the cleaned microphone: a residual 52 dB under the output
    echo, extra = service.guard.bar()
    assert extra == 0.0 and echo is not None and echo < -60.0  # the margin sits on the residual only
    # The user, 2 dB over the room's threshold (what barges in when the robot is silent), under the old bar
    # of threshold + margin (-37 dBFS).
    results = _robot_speaks(service, -38.0, 10, 2000)
    assert any(isinstance(r, Onset) for r in results)


def test_an_untrusted_canceller_keeps_the_full_margin_over_the_threshold_too() -> None:
    service = _service(converged=False)
    _robot_speaks(service, -72.0, 100, 1000)
    echo, extra = service.guard.bar()
    assert extra == 12.0 and echo == pytest.approx(ROBOT_DB - 4.0)  # the uncancelled echo path, full margin
    results = _robot_speaks(service, -38.0, 10, 2000)
    assert not any(isinstance(r, Onset) for r in results)


def test_the_residual_still_needs_the_margin() -> None:
    service = _service(converged=True)
    _robot_speaks(service, -35.0, 150, 1000)  # a loud residual: the guard learns it
    echo, extra = service.guard.bar()
    assert echo is not None and echo == pytest.approx(-35.0 + 3.0, abs=0.5)
    assert level_db(_noise(-34.0, 1)) < echo  # a residual 1 dB louder than usual is still the robot
    results = _robot_speaks(service, -34.0, 10, 3000)
    assert not any(isinstance(r, Onset) for r in results)


def test_with_a_canceller_the_guard_expects_the_residuals_bursts_not_its_median() -> None:
    service = _service(converged=True)
    guard = service.guard
    for i in range(150):  # 3 s: the residual is quiet, and one block in five bursts 30 dB louder
        guard.on_output(ROBOT_DB)
        guard.tick()
        guard.learn(-45.0 if i % 5 == 0 else -75.0)
    echo = guard.expected_echo_db()
    assert echo is not None and echo >= -46.0  # the bursts' level (-45), not the median (-75)
    assert guard.bar() == (pytest.approx(echo + 3.0), 0.0)


def test_without_a_canceller_the_guard_still_expects_the_median_echo() -> None:
    service = _service(converged=True)
    guard = service.guard
    guard.canceller = None
    for i in range(150):
        guard.on_output(ROBOT_DB)
        guard.tick()
        guard.learn(-45.0 if i % 5 == 0 else -75.0)
    assert guard.expected_echo_db() == pytest.approx(-75.0)
