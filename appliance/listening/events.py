"""Events the listening subsystem publishes besides the shared ones in :mod:`appliance.events`."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.events import Event


@dataclass(frozen=True)
class WakeWordDetected(Event):
    """A wake word model fired. ``accepted`` is False when the self-trigger guard refused it (the robot was
    speaking and the microphone was not louder than its own echo), with the reason."""

    wake_word: str
    probability: float
    accepted: bool = True
    reason: str = ""
