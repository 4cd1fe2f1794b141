"""Settings of the MQTT fleet link (the ``[mqtt]`` section)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from appliance.settings_base import Section

# Home Assistant's discovery topics only allow these in a node id; we use the same for our own topics.
NODE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CREDENTIAL_NAME = "mqtt_password"


def default_node_id() -> str:
    """This machine's host name, reduced to the characters a topic level and a discovery node id allow."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0])[:64]
    return name or "appliance"


def _check_topic(value: str, what: str) -> str:
    value = value.strip()
    if not value or value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError(f"{what} must be a topic like 'appliance/robot1' (no leading, trailing or double '/')")
    if any(c in value for c in "+#\0"):
        raise ValueError(f"{what} must not contain the wildcards + or #")
    return value


class MqttConfig(Section):
    """Connect the robot to an MQTT broker: Home Assistant discovery, commands, fleet-wide announcements.

    The password comes from ``password`` (better ``$APPLIANCE_MQTT__PASSWORD``) or the systemd credential
    ``mqtt_password``; it is never logged or shown.
    """

    enabled: bool = Field(default=False, description="connect to the broker")
    url: str = Field(default="mqtt://localhost:1883", description="mqtt://host[:1883] or mqtts://host[:8883] (TLS)")
    username: str | None = Field(default=None, description="user name at the broker")
    password: SecretStr | None = Field(default=None, description="prefer $APPLIANCE_MQTT__PASSWORD or the credential")
    ca_file: Path | None = Field(default=None, description="CA certificate(s) for mqtts://; default: system CAs")
    client_cert: Path | None = Field(default=None, description="client certificate (PEM) for brokers that ask for one")
    client_key: Path | None = Field(default=None, description="the client certificate's key (PEM)")
    node_id: str = Field(default_factory=default_node_id, description="this robot's id in topics; default host name")
    name: str | None = Field(default=None, description="the device name Home Assistant shows; default node_id")
    discovery_prefix: str = Field(default="homeassistant", description="Home Assistant's discovery prefix")
    discovery: bool = Field(default=True, description="announce entities for Home Assistant")
    base_topic: str | None = Field(default=None, description="this robot's topics; default appliance/<node_id>")
    fleet_topic: str = Field(default="appliance/all", description="topics every robot listens to (say, mute)")
    keepalive: int = Field(default=60, ge=5, le=3600, description="MQTT keep-alive (s); a dead link is noticed in 1.5x")
    connect_timeout: float = Field(default=10.0, gt=0, le=120, description="TCP + TLS + CONNACK time limit (s)")
    reconnect_initial: float = Field(default=1.0, gt=0, le=60, description="first reconnect delay (s)")
    reconnect_max: float = Field(default=60.0, gt=0, le=3600, description="reconnect delays double up to this (s)")
    uptime_interval: float = Field(default=60.0, ge=0, description="re-publish state (uptime) every (s); 0 = never")
    announce_jitter: float = Field(
        default=5.0,
        ge=0,
        le=600,
        description="wait up to this long (random) before answering Home Assistant's birth, so a fleet spreads out (s)",
    )
    max_payload: int = Field(default=4096, ge=64, le=1_000_000, description="longer commands are refused (bytes)")
    fleet_say_max_age: float = Field(
        default=300.0, ge=0, description="a retained fleet say older than this is not said on (re)connect (s)"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("url must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("url has no host")
        if parts.username or parts.password:
            raise ValueError("put the user in mqtt.username and the password in the credential, not in the url")
        try:
            parts.port  # noqa: B018 - raises for a port out of range
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("url must be only mqtt[s]://host[:port]")
        return value

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        if not NODE_ID.match(value):
            raise ValueError("node_id may only hold letters, digits, '_' and '-' (at most 64)")
        return value

    @field_validator("discovery_prefix", "fleet_topic")
    @classmethod
    def _topics(cls, value: str, info: ValidationInfo) -> str:
        return _check_topic(value, info.field_name or "topic")

    @field_validator("base_topic")
    @classmethod
    def _base(cls, value: str | None) -> str | None:
        return None if value is None else _check_topic(value, "base_topic")

    @model_validator(mode="after")
    def _distinct(self) -> MqttConfig:
        if self.topic == self.fleet_topic:
            raise ValueError(f"base_topic {self.topic!r} is the fleet topic; choose another node_id or base_topic")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        return self

    # --- derived ----------------------------------------------------------------------------------------------

    @property
    def topic(self) -> str:
        return self.base_topic or f"appliance/{self.node_id}"

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)
