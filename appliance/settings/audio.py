from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from appliance.settings_base import Section

AudioBackend = Literal["auto", "device", "simulated", "file"]
# TOML has no null and the environment has only strings: a silent simulated microphone is spelled "never".
SpeechAfter = Annotated[float, Field(ge=0)] | Literal["never"]


class AudioConfig(Section):
    """Where sound comes from and goes to.

    ``auto`` picks the sound card when PortAudio finds one and the simulated device otherwise, so the
    default configuration runs on a laptop, a CI machine and a Pi alike.
    """

    input: AudioBackend = "auto"
    input_device: str | int | None = Field(
        default=None, description="PortAudio device: index, or a substring of its name"
    )
    input_file: Path | None = Field(
        default=None, description="WAV played as the microphone ('file' input, or the simulated mic's phrase)"
    )
    input_file_pace: Literal["realtime", "listener"] = Field(
        default="realtime",
        description="'file' input: 'realtime' like a microphone; 'listener': as fast as the listener takes it "
        "(a machine too slow for real time, e.g. an emulated Pi in tests, still hears every block)",
    )
    simulated_speech_after: SpeechAfter = Field(
        default=2.0, description='seconds after start before the simulated mic says its phrase; "never" = silence'
    )
    simulated_repeat: float | None = Field(
        default=None, gt=0, description="say the simulated phrase again every N seconds"
    )
    output: AudioBackend = "auto"
    output_device: str | int | None = None
    output_file: Path | None = Field(default=None, description="WAV the speaker writes to ('file' output)")
    block_ms: int = Field(default=20, ge=10, le=100, description="audio block length in milliseconds")
    device_block_ms: int = Field(
        default=40,
        ge=10,
        le=200,
        description="how often the sound card hands captured audio over (ms); larger = less CPU, more latency",
    )
    idle_handover_ms: int = Field(
        default=200,
        ge=10,
        le=500,
        description="while idle (nobody speaking, robot quiet), captured audio is handed over this often (ms) "
        "instead of every device block: fewer wake-ups, less CPU; speech switches back at once (an onset or a "
        "wake word is noticed up to this much later; no audio is lost)",
    )
    busy_handover_ms: int = Field(
        default=80,
        ge=10,
        le=200,
        description="while the robot thinks or speaks and nobody else is speaking, captured audio is handed over "
        "this often (ms); once the user's voice is heard, every device block again. A barge-in is noticed up to "
        "this minus device_block_ms later; set it to device_block_ms for the quickest barge-in, at more CPU",
    )
    volume: float = Field(default=1.0, ge=0.0, le=2.0, description="output gain")

    @field_validator("simulated_speech_after", mode="before")
    @classmethod
    def _none_is_never(cls, value: Any) -> Any:
        return "never" if value is None else value  # Python callers (tests) may still say None

    @model_validator(mode="after")
    def _files_given(self) -> AudioConfig:
        if self.input == "file" and self.input_file is None:
            raise ValueError("input = 'file' needs input_file")
        if self.output == "file" and self.output_file is None:
            raise ValueError("output = 'file' needs output_file")
        return self
