"""The robot against a real Mosquitto, with paho-mqtt standing in for Home Assistant and the operator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from appliance.audio.playback import MemorySink
from appliance.config import AppConfig
from appliance.events import (
    ErrorRaised,
    FaceChanged,
    ListenRequested,
    MqttStatus,
    MuteRequested,
    TurnFinished,
    TurnStarted,
)
from appliance.integrations.mqtt.service import MqttService
from tests.harness import running_appliance
from tests.mqtt_broker import HomeAssistant, Mosquitto, mosquitto_missing

NODE = "r1"
BASE = f"appliance/{NODE}"
AVAILABILITY = f"{BASE}/availability"


@pytest.fixture(autouse=True)
def _need_mosquitto() -> None:
    missing = mosquitto_missing()
    if missing:
        pytest.fail(missing)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path) as running:
        yield running


def robot_config(url: str, **mqtt: Any) -> AppConfig:
    return AppConfig.model_validate(
        {
            "audio": {"input": "simulated", "output": "simulated", "simulated_speech_after": None},
            "gpio": {"pin_factory": "mock"},
            "log": {"status_line": "off"},
            "control": {"enabled": False},
            "mqtt": {
                "enabled": True,
                "url": url,
                "node_id": NODE,
                "announce_jitter": 0,
                "reconnect_initial": 0.05,
                "reconnect_max": 0.5,
                **mqtt,
            },
        }
    )


def mqtt_service(app: Any) -> MqttService:
    service = app.supervisor.records["mqtt"].service
    assert isinstance(service, MqttService)
    return service


def is_(topic: str, payload: bytes | None = None):  # type: ignore[no-untyped-def]
    return lambda t, p, r: t == topic and (payload is None or p == payload)


async def settled(ha: HomeAssistant, log: Any, face: str) -> None:
    """Every message sent before this one has been handled: the robot handles its messages in order."""
    ha.publish(f"{BASE}/face/set", face)
    await log.wait_for(FaceChanged, lambda e: e.name == face)


def state_has(**wanted: Any):  # type: ignore[no-untyped-def]
    def check(t: str, p: bytes, r: bool) -> bool:
        return t == f"{BASE}/state" and all(json.loads(p).get(k) == v for k, v in wanted.items())

    return check


async def test_announces_entities_state_and_availability(broker: Mosquitto) -> None:
    ha = HomeAssistant(broker)
    try:
        async with running_appliance(robot_config(broker.url)) as (app, _log):
            await ha.wait_for(is_(AVAILABILITY, b"online"))
            configs = {t: json.loads(p) for t, p, _r in ha.seen() if t.startswith("homeassistant/")}
            kinds = {t.split("/")[1] for t in configs}
            assert kinds == {"sensor", "switch", "number", "select", "text", "button", "update", "event"}
            assert all(c["availability"][0]["topic"] == AVAILABILITY for c in configs.values())
            state = json.loads(ha.last(f"{BASE}/state") or b"{}")
            assert state["state"] == "idle" and state["muted"] == "OFF" and state["face"] == "neutral"
            assert {"brain", "brain_health", "latency", "uptime", "volume"} <= state.keys()
            update = json.loads(ha.last(f"{BASE}/update") or b"{}")
            assert update["installed_version"] == update["latest_version"]
            info = json.loads(ha.last(f"{BASE}/info") or b"{}")
            assert info["node_id"] == NODE and len(info["config_revision"]) == 12
        # A clean shutdown says offline itself (a clean DISCONNECT suppresses the will).
        await ha.wait_for(is_(AVAILABILITY, b"offline"))
    finally:
        ha.close()

    # Everything Home Assistant needs is retained: a late subscriber gets it all.
    late = HomeAssistant(broker, client_id="late")
    try:
        await late.wait_for(is_("homeassistant/update/r1/firmware/config"))
        assert all(retained for _t, _p, retained in late.seen())
    finally:
        late.close()


async def test_commands_act_on_the_robot(broker: Mosquitto) -> None:
    ha = HomeAssistant(broker)
    try:
        # A sink paced like a speaker, so the long line is still being spoken when the cancel arrives.
        async with running_appliance(robot_config(broker.url), sink=MemorySink(realtime=True)) as (app, log):
            await ha.wait_for(is_(AVAILABILITY, b"online"))
            ha.publish(f"{BASE}/face/set", "joy")
            await log.wait_for(FaceChanged, lambda e: e.name == "joy")
            ha.publish(f"{BASE}/volume/set", "0.4")
            await ha.wait_for(state_has(volume=0.4))
            assert app.sink.volume == pytest.approx(0.4)  # type: ignore[attr-defined]
            ha.publish(f"{BASE}/listen/set", "PRESS")
            await log.wait_for(ListenRequested, lambda e: e.source == "mqtt")
            ha.publish(f"{BASE}/say/set", "Hello from Home Assistant")
            started = await log.wait_for(TurnStarted)
            finished = await log.wait_for(TurnFinished, lambda e: e.turn_id == started.turn_id)
            assert finished.outcome == "done"
            await ha.wait_for(state_has(state="idle"))
            ha.publish(f"{BASE}/muted/set", "ON")
            await log.wait_for(MuteRequested, lambda e: e.muted and e.source == "mqtt")
            await ha.wait_for(state_has(muted="ON"))
            ha.publish(f"{BASE}/listen/set", "PRESS")  # muted: refused, not silently ignored
            event = await ha.wait_for(is_(f"{BASE}/event"))
            assert json.loads(event[1])["command"] == "listen"
            ha.publish(f"{BASE}/muted/set", "OFF")
            await ha.wait_for(state_has(muted="OFF"))
            ha.publish(f"{BASE}/say/set", json.dumps({"text": "A long story " * 20, "interrupt": True}))
            first = await log.wait_for(TurnStarted, lambda e: e.turn_id != started.turn_id)
            ha.publish(f"{BASE}/cancel/set", "PRESS")
            cancelled = await log.wait_for(TurnFinished, lambda e: e.turn_id == first.turn_id)
            assert cancelled.outcome == "interrupted"
            assert mqtt_service(app).refused == 1
    finally:
        ha.close()


HOSTILE = [
    ("face", b"bogus-face"),
    ("face", b""),
    ("volume", b"loud"),
    ("volume", b"7"),
    ("volume", b"NaN"),
    ("muted", b"perhaps"),
    ("say", b"{broken json"),
    ("say", b'{"text": ["not", "a", "string"]}'),
    ("say", b"   "),
    ("say", b"x" * 200_000),  # huge
    ("say", b"\xff\xfe\xfd"),  # not UTF-8
    ("selfdestruct", b"now"),  # unknown command
]


async def test_hostile_payloads_get_error_events_and_never_crash(broker: Mosquitto) -> None:
    ha = HomeAssistant(broker)
    try:
        async with running_appliance(robot_config(broker.url)) as (app, log):
            await ha.wait_for(is_(AVAILABILITY, b"online"))
            for command, payload in HOSTILE:
                ha.publish(f"{BASE}/{command}/set", payload)
            for _ in range(len(HOSTILE)):
                await ha.wait_for(lambda t, p, r: len(ha.seen(f"{BASE}/event")) >= len(HOSTILE))
            errors = [json.loads(p) for _t, p, _r in ha.seen(f"{BASE}/event")]
            assert [e["command"] for e in errors] == [c for c, _p in HOSTILE]
            assert all(e["event_type"] == "error" and e["message"] for e in errors)
            assert "bogus-face" in errors[0]["message"]
            # Still alive and obeying; never restarted by the supervisor.
            ha.publish(f"{BASE}/face/set", "sorrow")
            await log.wait_for(FaceChanged, lambda e: e.name == "sorrow")
            record = app.supervisor.records["mqtt"]
            assert record.status == "running" and record.restarts == 0
            assert not log.of(TurnStarted)
    finally:
        ha.close()


async def test_flood_of_commands_is_bounded(broker: Mosquitto) -> None:
    ha = HomeAssistant(broker)
    try:
        async with running_appliance(robot_config(broker.url)) as (app, log):
            await ha.wait_for(is_(AVAILABILITY, b"online"))
            for i in range(2000):
                ha.client.publish(f"{BASE}/volume/set", f"{(i % 20) / 10}", qos=0)
            ha.publish(f"{BASE}/volume/set", "0.7")
            await ha.wait_for(state_has(volume=0.7))
            assert app.supervisor.records["mqtt"].status == "running"
    finally:
        ha.close()


async def test_fleet_say_and_mute_reach_the_robot_once(broker: Mosquitto) -> None:
    ha = HomeAssistant(broker)
    say = json.dumps({"id": "closing-1", "text": "The museum closes in ten minutes.", "at": time.time()})
    try:
        # Retained before the robot connects: it still hears it (fresh), once.
        ha.publish("appliance/all/say", say, retain=True)
        ha.publish("appliance/all/latest_version", "9.9.9", retain=True)
        async with running_appliance(robot_config(broker.url)) as (app, log):
            await log.wait_for(TurnStarted)
            update = await ha.wait_for(lambda t, p, r: t == f"{BASE}/update" and b"9.9.9" in p)
            assert json.loads(update[1])["latest_version"] == "9.9.9"
            # The broker restarts (losing retained messages); an operator's tool re-publishes the same one.
            broker.restart()
            ha.close()
            ha = HomeAssistant(broker)
            ha.publish("appliance/all/say", say, retain=True)
            await ha.wait_for(is_(AVAILABILITY, b"online"))
            await settled(ha, log, "surprised")
            assert len(log.of(TurnStarted)) == 1  # not said again on reconnect
            # A live fleet mute reaches it; so does a new say.
            ha.publish("appliance/all/mute", "ON")
            await log.wait_for(MuteRequested, lambda e: e.muted and e.source == "mqtt-fleet")
            ha.publish("appliance/all/say", json.dumps({"id": "closing-2", "text": "Five minutes."}))
            await log.wait_for(TurnStarted, lambda e: len(log.of(TurnStarted)) == 2)
            # A stale retained say (sent long ago) is not said after a reconnect.
            broker.restart()
            ha.close()
            ha = HomeAssistant(broker)
            old = json.dumps({"id": "old", "text": "Yesterday's news.", "at": time.time() - 86_400})
            ha.publish("appliance/all/say", old, retain=True)
            await ha.wait_for(is_(AVAILABILITY, b"online"))
            await settled(ha, log, "fun")
            assert len(log.of(TurnStarted)) == 2
    finally:
        ha.close()


async def test_broker_restart_and_home_assistant_birth_reannounce(broker: Mosquitto) -> None:
    ha = HomeAssistant(broker)
    try:
        async with running_appliance(robot_config(broker.url)) as (app, log):
            await ha.wait_for(is_(AVAILABILITY, b"online"))
            broker.restart()  # no persistence: every retained discovery message is gone
            ha.close()
            ha = HomeAssistant(broker)
            await ha.wait_for(is_("homeassistant/select/r1/face/config"))
            await ha.wait_for(is_(AVAILABILITY, b"online"))
            statuses = [e.status for e in log.of(MqttStatus)]
            assert statuses.count("connected") >= 2 and "disconnected" in statuses
            # Home Assistant restarts and says so: the robot announces itself again.
            ha.clear()
            ha.publish("homeassistant/status", "online")
            await ha.wait_for(is_("homeassistant/switch/r1/muted/config"))
            await ha.wait_for(is_(AVAILABILITY, b"online"))  # the last message of an announcement
            ha.clear()
            ha.publish("homeassistant/status", "offline")
            await settled(ha, log, "joy")
            assert not [t for t, _p, _r in ha.seen() if t.startswith("homeassistant/") and t.endswith("/config")]
    finally:
        ha.close()


async def test_tls_with_password(tmp_path: Path) -> None:
    with Mosquitto(tmp_path, tls=True, users={"robot": "right-password", "ha": "ha-password"}) as broker:
        assert broker.certs is not None
        ha = HomeAssistant(broker, username="ha", password="ha-password")
        try:
            config = robot_config(broker.url, username="robot", password="right-password", ca_file=str(broker.certs.ca))
            async with running_appliance(config) as (app, _log):
                await ha.wait_for(is_(AVAILABILITY, b"online"))
                ha.publish(f"{BASE}/volume/set", "0.3")
                await ha.wait_for(state_has(volume=0.3))
        finally:
            ha.close()


async def test_wrong_password_gives_clear_status_and_retries_with_backoff(tmp_path: Path) -> None:
    with Mosquitto(tmp_path, tls=True, users={"robot": "right-password"}) as broker:
        assert broker.certs is not None
        config = robot_config(broker.url, username="robot", password="wrong-password-123", ca_file=str(broker.certs.ca))
        async with running_appliance(config) as (app, log):
            await log.wait_for(MqttStatus, lambda e: e.status == "refused")
            service = mqtt_service(app)
            assert service.link is not None
            delays: list[float] = []
            with trio.fail_after(20):
                while service.link.failures < 5:
                    if not delays or delays[-1] != service.link.last_delay:
                        delays.append(service.link.last_delay)
                    await trio.sleep(0.005)
            assert service.link.status == "refused" and service.link.connects == 0
            refused = [e for e in log.of(MqttStatus) if e.status == "refused"]
            assert len(refused) == 1  # said once, clearly, not once per retry
            assert "not authori" in refused[0].detail.lower() and "password" in refused[0].detail
            assert "wrong-password" not in refused[0].detail
            assert [e.where for e in log.of(ErrorRaised)].count("mqtt") == 1
            assert len(delays) >= 3 and max(delays) <= config.mqtt.reconnect_max
            assert max(delays) > min(delays)  # backing off, not hammering the broker at a fixed rate
            assert app.supervisor.records["mqtt"].status == "running"  # retrying, not crashing


async def test_untrusted_certificate_is_reported(tmp_path: Path) -> None:
    with Mosquitto(tmp_path, tls=True, users={"robot": "pw"}) as broker:
        config = robot_config(broker.url, username="robot", password="pw")  # system CAs: ours is unknown
        async with running_appliance(config) as (_app, log):
            event = await log.wait_for(MqttStatus, lambda e: e.status == "unreachable")
            assert "TLS" in event.detail and "ca_file" in event.detail


def test_killed_robot_goes_offline_through_its_last_will(broker: Mosquitto, tmp_path: Path) -> None:
    config = tmp_path / "robot.toml"
    config.write_text(
        '[audio]\ninput = "simulated"\noutput = "simulated"\n[gpio]\npin_factory = "mock"\n'
        '[log]\nstatus_line = "off"\n[control]\nenabled = false\n'
        f'[mqtt]\nenabled = true\nurl = "{broker.url}"\nnode_id = "{NODE}"\n'
    )
    ha = HomeAssistant(broker)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    robot = subprocess.Popen(
        [sys.executable, "-m", "appliance", "--config", str(config), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        trio.run(ha.wait_for, is_(AVAILABILITY, b"online"), 60)
        robot.send_signal(signal.SIGKILL)
        robot.wait(10)
        trio.run(ha.wait_for, is_(AVAILABILITY, b"offline"), 15)
        retained = HomeAssistant(broker, client_id="later", topics=(AVAILABILITY,))
        trio.run(retained.wait_for, is_(AVAILABILITY, b"offline"))
        retained.close()
    finally:
        if robot.poll() is None:
            robot.kill()
            robot.wait()
        ha.close()


async def test_dead_broker_keeps_only_the_latest_state(broker: Mosquitto) -> None:
    ha = HomeAssistant(broker)
    try:
        async with running_appliance(robot_config(broker.url, reconnect_max=0.2)) as (app, log):
            await ha.wait_for(is_(AVAILABILITY, b"online"))
            ha.close()
            broker.stop()
            await log.wait_for(MqttStatus, lambda e: e.status == "disconnected")
            service = mqtt_service(app)
            assert service.link is not None
            for i in range(2000):  # a day of state changes while the broker is away
                app.commands.set_muted(i % 2 == 0, "test")
                await trio.lowlevel.checkpoint()
            assert len(service.link.outbox) <= 3  # state (and info/update): the latest of each, nothing more
            broker.start()
            ha = HomeAssistant(broker)
            await ha.wait_for(state_has(muted="OFF"))  # the last change, i = 1999
            await ha.wait_for(is_(AVAILABILITY, b"online"))
    finally:
        ha.close()


async def test_a_crash_in_the_link_is_restarted_by_the_supervisor(broker: Mosquitto) -> None:
    from appliance.events import ServiceStatus

    ha = HomeAssistant(broker)
    try:
        async with running_appliance(robot_config(broker.url)) as (app, log):
            await ha.wait_for(is_(AVAILABILITY, b"online"))
            service = mqtt_service(app)
            real = service.command

            async def buggy(name: str, payload: bytes) -> None:
                service.command = real  # type: ignore[method-assign]  # fails once, like a bug on one input
                raise RuntimeError("a bug")

            service.command = buggy  # type: ignore[method-assign]
            ha.clear()
            ha.publish(f"{BASE}/face/set", "joy")
            await log.wait_for(ServiceStatus, lambda e: e.service == "mqtt" and e.status == "restarting")
            await log.wait_for(
                ServiceStatus, lambda e: e.service == "mqtt" and e.status == "running" and e.restarts == 1
            )
            await ha.wait_for(is_(AVAILABILITY, b"online"))  # reconnected and announced again
            await settled(ha, log, "sorrow")
    finally:
        ha.close()
