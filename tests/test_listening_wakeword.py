"""microWakeWord on the device: model resolution, detection on espeak-ng fixtures, false accepts, pre-roll."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from appliance.audio.base import BlockQueue
from appliance.bus import EventBus
from appliance.listening.endpointer import Onset, Segment
from appliance.listening.service import ListeningService
from appliance.listening.wakeword import (
    MicroWakeWordDetector,
    WakeWordError,
    bundled_model_names,
    bundled_models_dir,
    resolve_model,
)
from appliance.settings.listening import ListeningConfig, WakeWordConfig, WakeWordModel
from tests import listening_fixtures as F

VOICES = ("en-us", "en", "en-us+m3")


def detector(*names: str, runtime: str = "auto", refractory: float = 2.0) -> MicroWakeWordDetector:
    return MicroWakeWordDetector.from_config([WakeWordModel(model=n) for n in names], runtime, refractory)


def detections(det: MicroWakeWordDetector, samples: np.ndarray) -> list[tuple[str, float]]:
    found = []
    for block in F.blocks(samples):
        hit = det.process(block)
        if hit is not None:
            found.append((hit.id, hit.at))
    return found


def test_bundled_models_resolve_by_name() -> None:
    names = bundled_model_names()
    assert {"okay_nabu", "hey_jarvis", "alexa", "hey_mycroft"} <= set(names)
    spec = resolve_model(WakeWordModel(model="okay_nabu", probability_cutoff=0.9))
    assert spec.phrase == "Okay Nabu" and spec.probability_cutoff == 0.9 and spec.sliding_window == 5


def test_custom_model_by_manifest_path(tmp_path: Path) -> None:
    source = bundled_models_dir()
    assert source is not None
    shutil.copy(source / "okay_nabu.tflite", tmp_path / "my_robot.tflite")
    manifest = json.loads((source / "okay_nabu.json").read_text())
    manifest.update(model="my_robot.tflite", wake_word="My Robot")
    (tmp_path / "my_robot.json").write_text(json.dumps(manifest))
    for given in ("my_robot.json", "my_robot.tflite"):
        spec = resolve_model(WakeWordModel(model=str(tmp_path / given)))
        assert spec.phrase == "My Robot" and spec.model_path == (tmp_path / "my_robot.tflite").resolve()


def test_bad_models_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(WakeWordError, match="not bundled.*okay_nabu"):
        resolve_model(WakeWordModel(model="hey_toaster"))
    with pytest.raises(WakeWordError, match="does not exist"):
        resolve_model(WakeWordModel(model=str(tmp_path / "missing.json")))
    (tmp_path / "broken.json").write_text('{"model": "x.tflite"}')
    with pytest.raises(WakeWordError, match="not a microWakeWord manifest"):
        resolve_model(WakeWordModel(model=str(tmp_path / "broken.json")))
    with pytest.raises(ValidationError, match="at least one wake word model"):
        WakeWordConfig(models=[])


@pytest.mark.parametrize("voice", VOICES)
def test_wake_phrase_is_found_alone_and_before_a_command(voice: str) -> None:
    det = detector("okay_nabu")
    alone = F.wake_alone(voice)
    hits = detections(det, alone.samples)
    assert [h[0] for h in hits] == ["okay_nabu"]
    # found shortly after the phrase ends, not before it
    assert alone.spans[0][1] - 0.2 <= hits[0][1] - 0 <= alone.spans[0][1] + 0.8
    det.reset()
    assert [h[0] for h in detections(det, F.wake_and_command(voice, pause=0.3).samples)] == ["okay_nabu"]


def test_command_alone_does_not_wake() -> None:
    det = detector("okay_nabu")
    for voice in VOICES:
        for command in F.COMMANDS:
            assert detections(det, F.command_alone(voice, command).samples) == []


def test_several_wake_words_at_once_and_refractory_period() -> None:
    det = detector("okay_nabu", "alexa", "hey_mycroft", refractory=3.0)
    samples = F.scene([1.0, F.speak("alexa", "en-us"), 2.0, F.speak("hey mycroft", "en"), 2.0]).samples
    assert [h[0] for h in detections(det, samples)] == ["alexa", "hey_mycroft"]
    twice = F.scene([1.0, F.speak("okay nabu", "en-us"), 0.3, F.speak("okay nabu", "en-us"), 2.0]).samples
    assert [h[0] for h in detections(det, twice)] == ["okay_nabu"]  # the repeat falls in the refractory time


def test_pymicro_fallback_runtime_detects_the_same() -> None:
    det = detector("okay_nabu", runtime="pymicro")
    assert det.runtime == "pymicro"
    assert [h[0] for h in detections(det, F.wake_alone("en-us").samples)] == ["okay_nabu"]


def test_no_false_accepts_in_ten_minutes_of_other_speech_and_noise() -> None:
    det = detector("okay_nabu")
    negative = F.negative_set(10.0)
    assert len(negative) >= 10 * 60 * F.RATE
    assert detections(det, negative) == []
    assert det.models[0].best < det.models[0].spec.probability_cutoff


def _wake_service(**settings: object) -> ListeningService:
    config = ListeningConfig(mode="wake_word", **settings)  # type: ignore[arg-type]
    service = ListeningService(EventBus(), BlockQueue(), None, config)  # type: ignore[arg-type]
    service._load()
    return service


@pytest.mark.parametrize("pause", [0.0, 0.4])
def test_utterance_after_wake_word_keeps_the_command_whole(pause: float) -> None:
    scene = F.wake_and_command("en-us", "what time is it", pause=pause)
    service = _wake_service(early_endpoint=None)
    results = [(i, r) for i, b in enumerate(F.blocks(scene.samples)) if (r := service.process_block(b))]
    segments = [(i, r) for i, r in results if isinstance(r, Segment)]
    assert service.wake_detections == 1 and len(segments) == 1
    i, segment = segments[0]
    end = (i + 1) * 0.02
    start = end - len(segment.samples) / F.RATE
    command_start, command_end = scene.spans[1]
    assert start <= command_start and end >= command_end  # nothing of the command is lost
    assert segment.samples.size and service.wake_detections == 1


def test_wake_word_mode_ignores_speech_without_the_wake_word_until_a_turn_opens_the_conversation() -> None:
    service = _wake_service()
    command = F.command_alone("en-us").samples
    assert not any(isinstance(service.process_block(b), Onset) for b in F.blocks(command))
    service.conversation_open_until = service.guard.now + 60  # what TurnFinished(done) does
    assert any(isinstance(service.process_block(b), Onset) for b in F.blocks(command))


def test_config_names_an_unknown_wake_word_model() -> None:
    from appliance.config import AppConfig

    toaster = {"models": [{"model": "hey_toaster"}]}
    with pytest.raises(ValidationError, match=r"listening\n.*hey_toaster.*not bundled"):
        AppConfig.model_validate({"listening": {"mode": "wake_word", "wake_word": toaster}})
    AppConfig.model_validate({"listening": {"mode": "always", "wake_word": toaster}})  # unused


@pytest.mark.parametrize("model", ["okay_nabu", "hey_jarvis"])
def test_one_call_per_model_run_gives_the_wrappers_probabilities_exactly(model: str) -> None:
    """The direct call into the TFLite library (all frames of a run at once) against pymicro-wakeword's own
    per-frame wrapper, on the same audio: every probability bit for bit, through a reset too."""
    audio = np.concatenate([F.wake_and_command("en-us").samples, F.noise("babble", 2.0, seed=5)])
    direct, wrapper = detector(model, runtime="pymicro"), detector(model, runtime="pymicro")
    fast, slow = direct.models[0], wrapper.models[0]
    assert fast.runner._direct  # type: ignore[attr-defined]
    slow.runner._direct = False  # type: ignore[attr-defined]
    for _ in range(2):  # fresh, then after a reset
        seen_fast, seen_slow = [], []
        for block in F.blocks(audio):
            direct.process(block)
            wrapper.process(block)
            seen_fast.append(tuple(fast.probabilities))
            seen_slow.append(tuple(slow.probabilities))
        assert seen_fast == seen_slow
        assert max(p for window in seen_fast for p in window) > 0.5 or model != "okay_nabu"
        direct.reset()
        wrapper.reset()
