"""Home Assistant MQTT discovery: one retained config message per entity, all tied to one device.

Topics: ``<prefix>/<component>/<node_id>/<object_id>/config``. Every entity reads the robot's one JSON state
message (``<base>/state``) through a ``value_template``, so a state change is one publish, not eight; the
firmware entity reads ``<base>/update`` in the JSON form the MQTT update platform documents
(``installed_version``, ``latest_version``). Commands go to ``<base>/<object_id>/set``. Field names are the
ones Home Assistant's MQTT platform pages document (sensor, switch, number, select, text, button, update,
event), written out in full rather than abbreviated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance import __version__
from appliance.settings.hardware import STATES
from appliance.settings.mqtt import MqttConfig

ONLINE, OFFLINE = "online", "offline"
BRAIN_HEALTH = ("online", "fallback", "offline")


@dataclass(frozen=True)
class Topics:
    base: str
    fleet: str
    discovery_prefix: str

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def update(self) -> str:
        return f"{self.base}/update"

    @property
    def info(self) -> str:
        return f"{self.base}/info"

    @property
    def event(self) -> str:
        return f"{self.base}/event"

    @property
    def commands(self) -> str:
        """The subscription for every command: ``<base>/<command>/set``."""
        return f"{self.base}/+/set"

    def command(self, name: str) -> str:
        return f"{self.base}/{name}/set"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth and last will: ``online`` when it (re)starts."""
        return f"{self.discovery_prefix}/status"

    @property
    def fleet_say(self) -> str:
        return f"{self.fleet}/say"

    @property
    def fleet_mute(self) -> str:
        return f"{self.fleet}/mute"

    @property
    def fleet_latest_version(self) -> str:
        """An operator's retained ``latest_version``: every robot's update entity compares itself to it."""
        return f"{self.fleet}/latest_version"

    @classmethod
    def of(cls, config: MqttConfig) -> Topics:
        return cls(config.topic, config.fleet_topic, config.discovery_prefix)


@dataclass(frozen=True)
class Entity:
    object_id: str
    component: str
    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    value: str | None = None  # the key in the state JSON this entity shows
    command: bool = False  # has <base>/<object_id>/set


def entities(faces: list[str]) -> list[Entity]:
    return _sensors() + _controls(faces) + _diagnostics()


def _sensors() -> list[Entity]:
    return [
        Entity(
            "state",
            "sensor",
            "State",
            {"device_class": "enum", "options": list(STATES), "icon": "mdi:robot"},
            value="state",
        ),
        Entity("brain", "sensor", "Brain", {"icon": "mdi:brain"}, value="brain"),
        Entity(
            "brain_health",
            "sensor",
            "Brain health",
            {"device_class": "enum", "options": list(BRAIN_HEALTH), "icon": "mdi:cloud-check"},
            value="brain_health",
        ),
        Entity(
            "latency",
            "sensor",
            "Last turn latency",
            {
                "device_class": "duration",
                "unit_of_measurement": "s",
                "state_class": "measurement",
                "suggested_display_precision": 2,
            },
            value="latency",
        ),
        Entity(
            "uptime",
            "sensor",
            "Uptime",
            {
                "device_class": "duration",
                "unit_of_measurement": "s",
                "state_class": "total_increasing",
                "entity_category": "diagnostic",
            },
            value="uptime",
        ),
    ]


def _controls(faces: list[str]) -> list[Entity]:
    return [
        Entity(
            "muted",
            "switch",
            "Muted",
            {
                "payload_on": "ON",
                "payload_off": "OFF",
                "state_on": "ON",
                "state_off": "OFF",
                "icon": "mdi:microphone-off",
            },
            value="muted",
            command=True,
        ),
        Entity(
            "volume",
            "number",
            "Volume",
            {"min": 0.0, "max": 2.0, "step": 0.05, "mode": "slider", "icon": "mdi:volume-high"},
            value="volume",
            command=True,
        ),
        Entity("face", "select", "Face", {"options": faces, "icon": "mdi:emoticon"}, value="face", command=True),
        Entity("say", "text", "Say", {"min": 1, "max": 255, "mode": "text", "icon": "mdi:message-text"}, command=True),
        Entity(
            "cancel", "button", "Cancel turn", {"payload_press": "PRESS", "icon": "mdi:hand-back-left"}, command=True
        ),
        Entity("listen", "button", "Listen", {"payload_press": "PRESS", "icon": "mdi:microphone"}, command=True),
    ]


def _diagnostics() -> list[Entity]:
    return [
        Entity(
            "firmware",
            "update",
            "Firmware",
            {"device_class": "firmware", "title": "appliance", "entity_category": "diagnostic"},
        ),
        Entity(
            "config_revision", "sensor", "Config revision", {"icon": "mdi:file-cog", "entity_category": "diagnostic"}
        ),
        Entity("error", "event", "Error", {"event_types": ["error"], "icon": "mdi:alert"}),
    ]


def device(config: MqttConfig) -> dict[str, Any]:
    return {
        "identifiers": [f"appliance_{config.node_id}"],
        "name": config.name or config.node_id,
        "manufacturer": "appliance",
        "model": "talking robot",
        "sw_version": __version__,
    }


def discovery_messages(config: MqttConfig, faces: list[str]) -> dict[str, dict[str, Any]]:
    """Every entity's discovery topic and its config payload."""
    topics = Topics.of(config)
    dev = device(config)
    origin = {"name": "appliance", "sw_version": __version__}
    availability = [{"topic": topics.availability, "payload_available": ONLINE, "payload_not_available": OFFLINE}]
    out: dict[str, dict[str, Any]] = {}
    for entity in entities(faces):
        payload: dict[str, Any] = {
            "name": entity.name,
            "unique_id": f"appliance_{config.node_id}_{entity.object_id}",
            "device": dev,
            "origin": origin,
            "availability": availability,
            **entity.fields,
        }
        if entity.value is not None:
            payload["state_topic"] = topics.state
            payload["value_template"] = "{{ value_json." + entity.value + " }}"
        if entity.command:
            payload["command_topic"] = topics.command(entity.object_id)
            payload["qos"] = 1
        if entity.component == "update":
            payload["state_topic"] = topics.update
        elif entity.component == "event":
            payload["state_topic"] = topics.event
        elif entity.object_id == "config_revision":
            payload["state_topic"] = topics.info
            payload["value_template"] = "{{ value_json.config_revision }}"
        topic = f"{config.discovery_prefix}/{entity.component}/{config.node_id}/{entity.object_id}/config"
        out[topic] = payload
    return out
