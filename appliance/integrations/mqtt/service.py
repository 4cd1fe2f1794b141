"""The robot on an MQTT broker: Home Assistant entities, commands, fleet-wide say and mute.

A supervised subsystem (optional: a missing broker never holds the robot back). It follows the bus and
publishes one JSON state message per change, answers commands on ``<base>/<command>/set`` through the same
:class:`~appliance.commands.Commands` the control API uses, and re-announces its discovery messages on every
connect and whenever Home Assistant says it is back (``<prefix>/status`` = ``online``).

Topics (``<base>`` = ``appliance/<node_id>``, ``<fleet>`` = ``appliance/all``):

=================================  =============================================================
``<base>/availability``            ``online`` / ``offline`` (retained; the last will says offline)
``<base>/state``                   JSON: state, brain, brain_health, latency, uptime, muted, volume, face
``<base>/info``                    JSON: version, config_revision, node_id (retained)
``<base>/update``                  JSON: installed_version, latest_version (Home Assistant update entity)
``<base>/event``                   JSON: ``{"event_type": "error", "command", "message"}`` for refused commands
``<base>/<cmd>/set``               muted (ON/OFF), volume (0..2), face (name), say (text or JSON), cancel, listen
``<fleet>/say`` · ``<fleet>/mute``  every robot: text or ``{"id", "text", "at", "interrupt"}`` / ON, OFF
``<fleet>/latest_version``         an operator's retained latest version, shown by every update entity
=================================  =============================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import ssl
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from appliance import __version__
from appliance.commands import CommandRejected, Commands
from appliance.events import (
    BrainChanged,
    BrainHealthChanged,
    ConnectivityChanged,
    ErrorRaised,
    Event,
    FaceChanged,
    MqttStatus,
    MuteRequested,
    StateChanged,
    TurnFinished,
)
from appliance.integrations.mqtt import payloads
from appliance.integrations.mqtt.discovery import OFFLINE, ONLINE, Topics, discovery_messages
from appliance.integrations.mqtt.link import Incoming, MqttLink
from appliance.settings.mqtt import CREDENTIAL_NAME, MqttConfig

if TYPE_CHECKING:
    from appliance.assembly.parts import Appliance

log = logging.getLogger(__name__)

SOURCE = "mqtt"
FLEET_SOURCE = "mqtt-fleet"
COMMANDS = ("muted", "volume", "face", "say", "cancel", "listen")


def _followed_events() -> tuple[type[Event], ...]:

    return (
        StateChanged,
        MuteRequested,
        FaceChanged,
        TurnFinished,
        ConnectivityChanged,
        BrainChanged,
        BrainHealthChanged,
    )


def config_revision(config: Any) -> str:
    """A short digest of the running configuration (secrets masked), so an operator sees who lags behind."""
    dumped = config.model_dump(mode="json")
    for identity in ("node_id", "name", "base_topic"):  # one robot's own name: equal files give equal revisions
        dumped.get("mqtt", {}).pop(identity, None)
    data = json.dumps(dumped, sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:12]


def resolve_password(config: MqttConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """``mqtt.password`` (or ``$APPLIANCE_MQTT__PASSWORD``), else the systemd credential ``mqtt_password``."""
    from appliance.settings.secrets import lookup_secret

    if config.password is not None and config.password.get_secret_value():
        return config.password.get_secret_value()
    return lookup_secret("", CREDENTIAL_NAME, os.environ if environ is None else environ)


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if config.client_cert is not None:
        context.load_cert_chain(str(config.client_cert), str(config.client_key) if config.client_key else None)
    return context


class MqttService:
    name = "mqtt"

    def __init__(self, appliance: Appliance, commands: Commands, environ: Mapping[str, str] | None = None) -> None:
        self.app = appliance
        self.commands = commands
        self.environ = environ
        self.config: MqttConfig = appliance.config.mqtt
        self.link: MqttLink | None = None
        self.fleet = payloads.ReplayFilter()  # survives restarts of the service: replays stay filtered
        self.latest_version: str | None = None
        self.handled = 0
        self.refused = 0
        self._last_state: bytes | None = None
        self._last_info: bytes | None = None
        self._revision_of: tuple[int, str] | None = None
        self._nursery: trio.Nursery

    # --- running ------------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config = self.app.config.mqtt
        topics = self.topics = Topics.of(cfg)
        link = self.link = MqttLink(
            cfg,
            client_id=f"appliance-{cfg.node_id}",
            password=resolve_password(cfg, self.environ),
            will=(topics.availability, OFFLINE),
            subscriptions=[
                (topics.commands, 1),
                (topics.fleet_say, 1),
                (topics.fleet_mute, 1),
                (topics.fleet_latest_version, 1),
                (topics.ha_status, 1),
            ],
            tls=tls_context(cfg),
            on_connected=self._announce,
            on_status=self._status_changed,
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.commands.speaker is None:
                # No control API: this link runs the say queue itself (it also takes SayRequested events).
                from appliance.speaker import Speaker

                speaker = Speaker(self.app.conversation, self.app.bus, self.app.config.control.max_queued_says)
                await nursery.start(speaker.run)
                self.commands.speaker = speaker
                nursery.start_soon(self._forget_speaker, speaker)
            with self.app.bus.subscribe(*_followed_events(), name="mqtt", size=256) as sub:
                await nursery.start(link.run)
                nursery.start_soon(self._follow, sub)
                nursery.start_soon(self._handle, link)
                if cfg.uptime_interval > 0:
                    nursery.start_soon(self._refresh, cfg.uptime_interval)
                task_status.started()
                await trio.sleep_forever()

    async def _forget_speaker(self, speaker: Any) -> None:
        try:
            await trio.sleep_forever()
        finally:
            if self.commands.speaker is speaker:
                self.commands.speaker = None

    def _status_changed(self, status: str, detail: str) -> None:
        if status == "connected":
            log.info("mqtt: connected to %s", detail)
        elif status in ("refused", "unreachable"):
            log.warning("mqtt: %s: %s", status, detail)
            self.app.bus.publish(ErrorRaised("mqtt", f"{status}: {detail}"))
        elif status == "disconnected":
            log.warning("mqtt: disconnected: %s", detail)
        self.app.bus.publish(MqttStatus(status, detail))

    # --- publishing ---------------------------------------------------------------------------------------------

    def _announce(self) -> None:
        """On every connect (and Home Assistant's return): discovery, state, info, then ``online``."""
        assert self.link is not None
        outbox = self.link.outbox
        if self.config.discovery:
            for topic, payload in discovery_messages(self.config, self.commands.faces()).items():
                outbox.put(topic, json.dumps(payload, separators=(",", ":")), qos=1, retain=True)
        self._last_state = self._last_info = None  # a restarted broker may have lost them: send again
        self._publish_state()
        outbox.put(self.topics.availability, ONLINE, qos=1, retain=True)

    def _publish_state(self) -> None:
        if self.link is None:
            return
        state = json.dumps(self.snapshot(), separators=(",", ":")).encode()
        if state != self._last_state:
            self._last_state = state
            self.link.outbox.put(self.topics.state, state)
        info = json.dumps(self.info(), separators=(",", ":")).encode()
        if info != self._last_info:
            self._last_info = info
            self.link.outbox.put(self.topics.info, info, qos=1)
            update = {"installed_version": __version__, "latest_version": self.latest_version or __version__}
            self.link.outbox.put(self.topics.update, json.dumps(update), qos=1)

    def snapshot(self) -> dict[str, Any]:
        c = self.commands
        last = c.last_turn()
        latency = last.timings.first_audio if last is not None else None
        volume = c.volume()
        return {
            "state": c.state().value,
            "brain": str(getattr(self.app.brain, "name", "?")),
            "brain_health": self._brain_health(),
            "latency": round(latency, 3) if latency is not None else None,
            "uptime": int(c.uptime()),
            "muted": "ON" if c.muted() else "OFF",
            "volume": round(volume, 3) if volume is not None else None,
            "face": c.face(),
        }

    def info(self) -> dict[str, Any]:
        config = self.app.config
        key = id(config)
        if self._revision_of is None or self._revision_of[0] != key:  # the control API swaps the whole config
            self._revision_of = (key, config_revision(config))
        return {
            "version": __version__,
            "config_revision": self._revision_of[1],
            "node_id": self.config.node_id,
            "latest_version": self.latest_version,
        }

    def _brain_health(self) -> str:
        latest = self.app.bus.latest(ConnectivityChanged)
        if latest is not None:
            return latest.status
        brain = self.app.brain
        if getattr(brain, "name", "") == "offline":
            return "offline"
        return "fallback" if getattr(brain, "healthy", True) is False else "online"

    def error(self, command: str, message: str) -> None:
        self.refused += 1
        log.info("mqtt: refused %s: %s", command, message, extra={"command": command})
        if self.link is not None:
            body = {"event_type": "error", "command": command, "message": message}
            self.link.outbox.put(self.topics.event, json.dumps(body), retain=False)

    async def _follow(self, sub: Any) -> None:
        async for _event in sub:
            self._publish_state()

    async def _refresh(self, interval: float) -> None:
        # Uptime, and what changes without an event (a volume set through the API, a new configuration).
        # A random phase: a fleet that booted together (after a power cut) does not publish in lock-step.
        import random

        await trio.sleep(random.uniform(0, interval))
        while True:
            self._publish_state()
            await trio.sleep(interval)

    # --- receiving ----------------------------------------------------------------------------------------------

    async def _handle(self, link: MqttLink) -> None:
        async for message in link.incoming:
            try:
                await self.handle(message)
            except CommandRejected as exc:
                self.error(_command_name(message.topic, self.topics), str(exc))
            self.handled += 1

    async def handle(self, message: Incoming) -> None:
        topics, cfg = self.topics, self.config
        topic = message.topic
        if topic == topics.ha_status:
            if message.payload.strip() == b"online" and not message.retain:
                self._nursery.start_soon(self._reannounce)
            return
        if len(message.payload) > cfg.max_payload:
            raise CommandRejected(f"payload is {len(message.payload)} bytes; the limit is {cfg.max_payload}")
        if topic == topics.fleet_latest_version:
            version = payloads.text_of(message.payload).strip()[:64] or None
            if version != self.latest_version:
                self.latest_version = version
                self._publish_state()
        elif topic == topics.fleet_say:
            await self._fleet_say(message)
        elif topic == topics.fleet_mute:
            mute = payloads.parse_fleet_mute(message.payload)
            if self.fleet.admit(topic, mute.key, retained=message.retain):
                self.commands.set_muted(mute.muted, FLEET_SOURCE)
        elif topic.startswith(topics.base + "/") and topic.endswith("/set"):
            await self.command(topic[len(topics.base) + 1 : -len("/set")], message.payload)

    async def _fleet_say(self, message: Incoming) -> None:
        say = payloads.parse_say(message.payload)
        fresh = say.at is not None and time.time() - say.at <= self.config.fleet_say_max_age
        if not self.fleet.admit(message.topic, say.key, retained=message.retain, fresh=fresh):
            log.info("mqtt: fleet say %s already handled or stale; not said again", say.key)
            return
        self._say(say, FLEET_SOURCE)

    def _say(self, say: payloads.SayCommand, source: str) -> None:
        if say.face:
            self.commands.show_face(say.face)
        self.commands.say(say.text, interrupt=say.interrupt, source=source)

    async def command(self, name: str, payload: bytes) -> None:
        c = self.commands
        if name == "muted":
            c.set_muted(payloads.parse_bool(payload), SOURCE)
        elif name == "volume":
            c.set_volume(payloads.parse_number(payload))
            self._publish_state()
        elif name == "face":
            c.show_face(payloads.parse_name(payload))
        elif name == "say":
            self._say(payloads.parse_say(payload), SOURCE)
        elif name == "cancel":
            await c.cancel(SOURCE)
        elif name == "listen":
            c.listen(SOURCE)
        else:
            raise CommandRejected(f"unknown command {name[:40]!r}; known: {', '.join(COMMANDS)}")

    async def _reannounce(self) -> None:
        # Home Assistant restarted and may have lost our entities. A whole fleet hears this at once: spread
        # the answers out.
        delay = self.config.announce_jitter
        if delay > 0:
            import random

            await trio.sleep(random.uniform(0, delay))
        if self.link is not None and self.link.connected:
            self._announce()


def _command_name(topic: str, topics: Topics) -> str:
    if topic.startswith(topics.base + "/") and topic.endswith("/set"):
        return topic[len(topics.base) + 1 : -len("/set")][:40]
    return topic.rsplit("/", 1)[-1][:40]


def add_mqtt(appliance: Appliance, environ: Mapping[str, str] | None = None) -> MqttService | None:
    """Register the MQTT link with the supervisor when ``[mqtt] enabled``; checks certificate files first."""
    from appliance.settings_base import ConfigError

    config: MqttConfig = appliance.config.mqtt
    if not config.enabled:
        return None
    try:
        tls_context(config)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("mqtt", [f"mqtt: cannot load the TLS files: {exc}"]) from None
    commands = getattr(appliance, "commands", None) or Commands(appliance)
    service = MqttService(appliance, commands, environ)
    appliance.supervisor.add(service, required=False)
    return service
