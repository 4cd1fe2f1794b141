from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from appliance.settings_base import Section


class ListeningConfig(Section):
    """How the device decides that somebody spoke to it."""

    mode: Literal["always", "push_to_talk"] = "always"
    volume_db_threshold: float = Field(
        default=-40.0, le=0, description="level (dBFS) above which a block counts as speech"
    )
    silence_duration: float = Field(default=0.5, gt=0, le=5, description="silence that ends an utterance (s)")
    min_duration: float = Field(default=0.2, ge=0, description="shorter sounds are ignored (s)")
    max_duration: float = Field(default=10.0, gt=0, le=120, description="an utterance is cut after this (s)")
    preroll: float = Field(default=0.3, ge=0, le=2, description="audio kept from before the onset (s)")
    barge_in: bool = Field(default=True, description="speaking over the robot interrupts it")
    barge_in_margin_db: float = Field(
        default=12.0, ge=0, description="while the robot speaks, speech must be this much louder to count"
    )

    @model_validator(mode="after")
    def _durations(self) -> ListeningConfig:
        if self.min_duration >= self.max_duration:
            raise ValueError("min_duration must be shorter than max_duration")
        return self
