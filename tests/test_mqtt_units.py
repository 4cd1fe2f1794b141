"""The MQTT link's pure parts: config checks, payload parsing, replay filtering, discovery payloads, outbox."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from appliance.commands import CommandRejected
from appliance.config import AppConfig, load_config
from appliance.integrations.mqtt import payloads
from appliance.integrations.mqtt.discovery import Topics, discovery_messages
from appliance.integrations.mqtt.link import MAX_EVENTS_KEPT, Outbox
from appliance.settings.mqtt import MqttConfig
from appliance.settings_base import ConfigError

# Fields Home Assistant's MQTT platform pages list as required, per entity type, for discovery.
REQUIRED = {
    "sensor": {"state_topic"},
    "switch": {"command_topic"},
    "number": {"command_topic"},
    "select": {"command_topic", "options"},
    "text": {"command_topic"},
    "button": {"command_topic"},
    "update": set(),
    "event": {"state_topic", "event_types"},
}
# Every key we send must be one the platform documents (no typos that Home Assistant would reject).
COMMON = {
    "name",
    "unique_id",
    "device",
    "origin",
    "availability",
    "icon",
    "entity_category",
    "qos",
    "value_template",
    "state_topic",
}
DOCUMENTED = {
    "sensor": COMMON | {"device_class", "unit_of_measurement", "state_class", "options", "suggested_display_precision"},
    "switch": COMMON | {"command_topic", "payload_on", "payload_off", "state_on", "state_off"},
    "number": COMMON | {"command_topic", "min", "max", "step", "mode"},
    "select": COMMON | {"command_topic", "options"},
    "text": COMMON | {"command_topic", "min", "max", "mode"},
    "button": COMMON | {"command_topic", "payload_press"},
    "update": COMMON | {"device_class", "title"},
    "event": COMMON | {"event_types"},
}


def test_config_defaults_off_and_derives_topics() -> None:
    cfg = AppConfig().mqtt
    assert cfg.enabled is False
    cfg = MqttConfig(url="mqtts://broker.local", node_id="robot-7")
    assert (cfg.host, cfg.port, cfg.tls, cfg.topic) == ("broker.local", 8883, True, "appliance/robot-7")
    assert MqttConfig(url="mqtt://b").port == 1883


@pytest.mark.parametrize(
    "values",
    [
        {"url": "http://broker"},
        {"url": "mqtt://"},
        {"url": "mqtt://user:pw@broker"},
        {"url": "mqtt://broker:99999"},
        {"url": "mqtt://broker/path"},
        {"node_id": "has space"},
        {"node_id": "a/b"},
        {"node_id": "x" * 65},
        {"base_topic": "appliance/#"},
        {"base_topic": "/lead"},
        {"fleet_topic": "a//b"},
        {"node_id": "all"},  # appliance/all is the fleet topic
        {"client_key": "/k.pem"},
        {"keepalive": 1},
    ],
)
def test_config_refuses_bad_values(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MqttConfig(**values)


def test_password_never_shown(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "a.toml"
    path.write_text('[mqtt]\nenabled = true\nurl = "ftp://x"\npassword = "hunter2-secret"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    assert "hunter2" not in err.value.report()
    path.write_text('[mqtt]\npassword = "hunter2-secret"\n')
    assert "hunter2" not in json.dumps(load_config(path, {}).redacted())


def test_password_from_credential(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from appliance.integrations.mqtt.service import resolve_password

    (tmp_path / "mqtt_password").write_text("from-credential\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert resolve_password(MqttConfig(), env) == "from-credential"
    assert resolve_password(MqttConfig(password="explicit"), env) == "explicit"
    assert resolve_password(MqttConfig(), {}) is None


def test_discovery_payloads_carry_documented_fields() -> None:
    cfg = MqttConfig(node_id="r1", name="Robot One")
    messages = discovery_messages(cfg, ["joy", "neutral"])
    components = {topic.split("/")[1] for topic in messages}
    assert components == set(REQUIRED)
    unique_ids = set()
    for topic, payload in messages.items():
        prefix, component, node, object_id, last = topic.split("/")
        assert (prefix, node, last) == ("homeassistant", "r1", "config")
        assert REQUIRED[component] <= payload.keys(), topic
        assert payload.keys() <= DOCUMENTED[component], (topic, payload.keys() - DOCUMENTED[component])
        assert payload["device"]["identifiers"] == ["appliance_r1"] and payload["device"]["name"] == "Robot One"
        assert payload["availability"][0]["topic"] == "appliance/r1/availability"
        assert payload["origin"]["name"] == "appliance"
        unique_ids.add(payload["unique_id"])
        if "command_topic" in payload:
            assert payload["command_topic"] == f"appliance/r1/{object_id}/set" and payload["qos"] == 1
    assert len(unique_ids) == len(messages)
    face = messages["homeassistant/select/r1/face/config"]
    assert face["options"] == ["joy", "neutral"]
    update = messages["homeassistant/update/r1/firmware/config"]
    assert update["state_topic"] == "appliance/r1/update" and "command_topic" not in update  # read-only
    state = messages["homeassistant/sensor/r1/state/config"]
    assert set(state["options"]) == {"idle", "listening", "thinking", "speaking", "muted", "error"}


def test_payload_parsing() -> None:
    assert payloads.parse_bool(b"ON") is True and payloads.parse_bool(b" off ") is False
    assert payloads.parse_bool(b'{"muted": true}') is True
    assert payloads.parse_number(b"0.25") == 0.25
    say = payloads.parse_say(b'{"text": "hi", "interrupt": true, "id": "n1", "at": 12.5}')
    assert (say.text, say.interrupt, say.key, say.at) == ("hi", True, "n1", 12.5)
    plain = payloads.parse_say("Grüße".encode())
    assert plain.text == "Grüße" and plain.key and plain.at is None


@pytest.mark.parametrize(
    ("parse", "payload"),
    [
        (payloads.parse_bool, b"maybe"),
        (payloads.parse_bool, b"\xff\xfe"),
        (payloads.parse_bool, b'{"muted": "perhaps"}'),
        (payloads.parse_number, b"loud"),
        (payloads.parse_number, b"nan"),
        (payloads.parse_number, b"1e999"),
        (payloads.parse_name, b"   "),
        (payloads.parse_say, b"{not json"),
        (payloads.parse_say, b'{"text": 5}'),
        (payloads.parse_say, b'{"text": "x", "interrupt": "yes"}'),
        (payloads.parse_say, b'{"text": "x", "at": "yesterday"}'),
        (payloads.parse_say, b"{" * 100_000),  # deep nesting
        (payloads.parse_fleet_mute, b'{"id": 3}'),
    ],
)
def test_hostile_payloads_are_rejected(parse, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandRejected):
        parse(payload)


def test_replay_filter_acts_once_per_retained_message() -> None:
    replay = payloads.ReplayFilter()
    assert replay.admit("t", "a", retained=True)  # first sight after boot
    assert not replay.admit("t", "a", retained=True)  # the same retained message after a reconnect
    assert replay.admit("t", "a", retained=False)  # sent again live: deliberate
    assert replay.admit("t", "b", retained=True)  # a new retained message published while we were away
    assert not replay.admit("t", "c", retained=True, fresh=False)  # too old to say now
    assert not replay.admit("t", "c", retained=True)  # ... and remembered as handled
    assert replay.admit("u", "a", retained=True)  # topics are separate


def test_outbox_keeps_latest_per_topic_and_bounded_events() -> None:
    box = Outbox()
    for i in range(10_000):
        box.put("a/state", f"{i}")
        box.put("a/event", f"e{i}", retain=False)
    assert len(box) == 1 + MAX_EVENTS_KEPT
    batch = box.take()
    assert batch[0].payload == b"9999" and batch[-1].payload == b"e9999"
    assert len(box) == 0


def test_topics() -> None:
    t = Topics.of(MqttConfig(node_id="r1", discovery_prefix="ha", fleet_topic="school/all"))
    assert (t.commands, t.fleet_say, t.ha_status, t.command("say")) == (
        "appliance/r1/+/set",
        "school/all/say",
        "ha/status",
        "appliance/r1/say/set",
    )


def test_one_say_queue_for_the_control_api_and_mqtt(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from appliance.app import build_appliance
    from appliance.audio.playback import MemorySink
    from appliance.audio.sources import SimulatedMicrophone
    from appliance.integrations.mqtt.service import MqttService
    from appliance.systemd import Notifier

    config = AppConfig.model_validate(
        {
            "gpio": {"pin_factory": "mock"},
            "control": {"port": 0, "state_dir": str(tmp_path)},
            "mqtt": {"enabled": True, "node_id": "r1"},
        }
    )
    app = build_appliance(
        config,
        source=SimulatedMicrophone(None, None),
        sink=MemorySink(realtime=False),
        notifier=Notifier({}),
        handle_signals=False,
        control=True,
    )
    service = app.supervisor.records["mqtt"].service
    inner = getattr(service, "inner", service)  # the control API wraps services so a config change restarts them
    assert isinstance(inner, MqttService)
    assert app.control is not None
    assert inner.commands is app.commands is app.control.ctx.commands
    assert app.commands.speaker is app.control.ctx.speaker
    assert app.supervisor.records["mqtt"].required is False
