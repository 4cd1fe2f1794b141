"""Wiring: puts the ESPHome server under the supervisor and connects the satellite to the robot's parts."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from appliance.integrations.esphome.satellite import Satellite, TappedBlockQueue, satellite_for
from appliance.integrations.esphome.server import EsphomeServer

if TYPE_CHECKING:
    from appliance.assembly.parts import Appliance
    from appliance.audio.base import BlockQueue

log = logging.getLogger(__name__)


def wake_word_catalogue(appliance: Appliance) -> list[tuple[str, str]]:
    """(id, phrase) of each configured microWakeWord model, for Home Assistant's wake word picker."""
    from appliance.listening.wakeword import WakeWordError, resolve_model

    found = []
    for entry in appliance.config.listening.wake_word.models:
        try:
            spec = resolve_model(entry)
        except (WakeWordError, OSError, ValueError):
            continue
        found.append((spec.id, spec.phrase))
    return found


def add_esphome(appliance: Appliance, queue: BlockQueue) -> EsphomeServer:
    config = appliance.config.home_assistant
    satellite: Satellite = satellite_for(appliance.bus, config)
    if isinstance(queue, TappedBlockQueue):
        queue.tap = satellite.tap
    satellite.prefer = lambda: appliance.brain.name == "home_assistant"
    satellite.wake_words = appliance.listening
    if appliance.config.listening.wake_word.engine == "micro":
        satellite.wake_word_catalogue = wake_word_catalogue(appliance)
    server = EsphomeServer(config, appliance, satellite)
    appliance.supervisor.add(server, required=False)
    return server
