"""PATCH /config (validated, atomic, previous file kept, only the affected subsystem restarted), tokens, bind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from appliance.app import build_appliance
from appliance.auth import ControlSetupError, check_bind, host_header_is_loopback, resolve_token
from appliance.config import AppConfig, load_config
from appliance.control.config_patch import PatchRejected, merge_patch, plan_patch, write_config
from appliance.files import atomic_write
from appliance.settings.control import ControlConfig
from appliance.settings_base import ConfigError
from tests.fakes.control_robot import Robot, running_robot


@pytest.fixture
async def robot(tmp_path):
    async with running_robot(tmp_path) as robot:
        yield robot


def reconfigured(robot: Robot) -> dict[str, int]:
    return {n: r.reconfigured for n, r in robot.appliance.supervisor.records.items()}


async def test_good_patch_is_written_kept_and_restarts_only_listening(robot: Robot):
    before = robot.config_path.read_text()
    async with robot.client() as api:
        response = await api.patch("/v1/config", json={"listening": {"silence_duration": 0.8}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["restarted"] == ["listening"]
    assert body["config"]["listening"]["silence_duration"] == 0.8
    text = robot.config_path.read_text()
    assert tomllib.loads(text)["listening"]["silence_duration"] == 0.8
    assert text.startswith("# written by the test")  # comments survive
    assert Path(body["previous_file"]).read_text() == before
    assert robot.appliance.listening.config.silence_duration == 0.8
    counts = reconfigured(robot)
    assert counts.pop("listening") == 1
    assert set(counts.values()) == {0}
    assert all(r.restarts == 0 for r in robot.appliance.supervisor.records.values())
    assert robot.appliance.supervisor.records["listening"].status == "running"


async def test_bad_patch_changes_nothing_and_names_the_fields(robot: Robot):
    before = robot.config_path.read_text()
    async with robot.client() as api:
        response = await api.patch(
            "/v1/config", json={"listening": {"silence_duration": -1, "nonsense": 1}, "audio": {"volume": "loud"}}
        )
    assert response.status_code == 422
    locs = {tuple(d["loc"]) for d in response.json()["detail"]}
    assert ("listening", "silence_duration") in locs
    assert ("listening", "nonsense") in locs
    assert ("audio", "volume") in locs
    assert robot.config_path.read_text() == before
    assert not robot.config_path.with_name("appliance.toml.prev").exists()
    assert set(reconfigured(robot).values()) == {0}


async def test_secrets_cannot_be_patched(robot: Robot):
    async with robot.client() as api:
        response = await api.patch("/v1/config", json={"llm": {"api_key": "sk-x"}, "control": {"token": "x" * 20}})
    assert response.status_code == 422
    assert {tuple(d["loc"]) for d in response.json()["detail"]} == {("llm", "api_key"), ("control", "token")}


async def test_cloud_brain_without_keys_is_refused(robot: Robot):
    async with robot.client() as api:
        response = await api.patch("/v1/config", json={"conversation": {"brain": "cloud"}})
    assert response.status_code == 422
    assert "api_key" in response.text


async def test_volume_applies_live_without_restarts(robot: Robot):
    async with robot.client() as api:
        body = (await api.patch("/v1/config", json={"audio": {"volume": 0.4}})).json()
    assert body["applied"] == ["audio.volume"] and body["restarted"] == []
    assert robot.sink.volume == 0.4
    assert set(reconfigured(robot).values()) == {0}


async def test_history_limits_and_error_message_apply_live_without_restarts(robot: Robot):
    patch = {"conversation": {"history_limit": 7, "idle_timeout": 42.0, "error_message": "Oops, again."}}
    async with robot.client() as api:
        body = (await api.patch("/v1/config", json=patch)).json()
    assert body["applied"] == ["conversation"] and body["restarted"] == []
    conversation = robot.appliance.conversation
    assert (conversation.history.limit, conversation.history.idle_timeout) == (7, 42.0)
    assert conversation.error_message == "Oops, again."
    assert set(reconfigured(robot).values()) == {0}


async def test_prompt_change_rebuilds_the_brain_and_null_resets(robot: Robot):
    old_brain = robot.appliance.conversation.brain
    async with robot.client() as api:
        body = (await api.patch("/v1/config", json={"conversation": {"offline_message": "Back soon."}})).json()
        assert body["restarted"] == ["brain"]
        assert robot.appliance.conversation.brain is not old_brain
        assert robot.appliance.conversation.brain.message == "Back soon."  # type: ignore[attr-defined]
        reset = (await api.patch("/v1/config", json={"conversation": {"offline_message": None}})).json()
    assert reset["config"]["conversation"]["offline_message"] == AppConfig().conversation.offline_message
    assert "offline_message" not in tomllib.loads(robot.config_path.read_text())["conversation"]


async def test_control_changes_wait_for_the_next_start(robot: Robot):
    async with robot.client() as api:
        body = (await api.patch("/v1/config", json={"control": {"max_say_chars": 300}})).json()
        assert body["restart_required"] == ["control"]
        still_old_limit = await api.post("/v1/say", json={"text": "a" * 250})
    assert still_old_limit.status_code == 422
    assert tomllib.loads(robot.config_path.read_text())["control"]["max_say_chars"] == 300


async def test_without_a_config_file_patch_is_refused(tmp_path):
    async with running_robot(tmp_path) as robot:
        robot.appliance.control.ctx.config_path = None
        async with robot.client() as api:
            response = await api.patch("/v1/config", json={"log": {"level": "DEBUG"}})
    assert response.status_code == 409


# --- atomic writes -----------------------------------------------------------------------------------------


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "appliance.toml"
    target.write_text('[log]\nlevel = "INFO"\n')

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_config(target, '[log]\nlevel = "DEBUG"\n')
    assert target.read_text() == '[log]\nlevel = "INFO"\n'
    assert [p.name for p in tmp_path.iterdir()] == ["appliance.toml"]  # no temporary file left behind


def test_killed_writer_leaves_a_valid_file(tmp_path):
    """SIGKILL a process that rewrites the file as fast as it can; what is left always parses completely."""
    target = tmp_path / "appliance.toml"
    versions = [f'[conversation]\nsystem_prompt = "{c}{"x" * 200_000}"\n' for c in "ab"]
    for n, text in enumerate(versions):
        (tmp_path / f"v{n}").write_text(text)
    target.write_text(versions[0])
    script = tmp_path / "writer.py"
    script.write_text(
        "from pathlib import Path\n"
        "from appliance.control.config_patch import write_config\n"
        f"folder = Path({str(tmp_path)!r})\n"
        "versions = [(folder / 'v0').read_text(), (folder / 'v1').read_text()]\n"
        "print('go', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    write_config(folder / 'appliance.toml', versions[i % 2]); i += 1\n"
    )
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
        time.sleep(0.15)  # let it be somewhere in the middle of a write; not a timing assertion
        proc.kill()
        proc.wait()
        assert target.read_text() in versions
        prev = target.with_name("appliance.toml.prev")
        assert not prev.exists() or prev.read_text() in versions


def test_atomic_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "f.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two", keep_previous=tmp_path / "f.json.prev")
    assert target.read_bytes() == b"two"
    assert (tmp_path / "f.json.prev").read_bytes() == b"one"


def test_merge_patch_follows_rfc_7386():
    assert merge_patch({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": None, "e": 4}, "d": [1]}) == {
        "a": {"c": 2, "e": 4},
        "d": [1],
    }


def test_plan_patch_validates_with_environment_overrides(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("")
    with pytest.raises(PatchRejected) as caught:
        plan_patch(path, {"listening": {"min_duration": 5}}, {"APPLIANCE_LISTENING__MAX_DURATION": "4"})
    assert "min_duration must be shorter" in str(caught.value)
    text, config = plan_patch(path, {"listening": {"min_duration": 1}}, {"APPLIANCE_LISTENING__MAX_DURATION": "4"})
    assert "max_duration" not in text  # environment overrides are never written to the file
    assert config.listening.max_duration == 4


# --- tokens and binding ------------------------------------------------------------------------------------


def test_token_file_must_be_private(tmp_path):
    file = tmp_path / "token"
    file.write_text("a-long-enough-token-value\n")
    file.chmod(0o644)
    with pytest.raises(ControlSetupError, match="chmod 600"):
        resolve_token(ControlConfig(token_file=file), {})
    file.chmod(0o600)
    assert resolve_token(ControlConfig(token_file=file), {}) == "a-long-enough-token-value"


def test_token_sources_and_length(tmp_path):
    with pytest.raises(ControlSetupError, match="too short"):
        resolve_token(ControlConfig(token="short"), {})
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "control_token").write_text("credential-token-0123456789")
    assert resolve_token(ControlConfig(), {"CREDENTIALS_DIRECTORY": str(creds)}) == "credential-token-0123456789"
    config = load_config(None, {"APPLIANCE_CONTROL__TOKEN": "environment-token-0123456789"})
    assert resolve_token(config.control, {}) == "environment-token-0123456789"
    assert resolve_token(ControlConfig(), {}) is None


def test_refuses_a_network_bind_without_a_token():
    with pytest.raises(ControlSetupError, match="no token"):
        check_bind(ControlConfig(host="0.0.0.0"), None)
    check_bind(ControlConfig(host="0.0.0.0"), "x" * 16)
    check_bind(ControlConfig(host="::1"), None)
    config = AppConfig.model_validate(
        {"control": {"host": "192.168.1.20"}, "audio": {"input": "simulated", "output": "simulated"}}
    )
    with pytest.raises(ConfigError, match="control.host"):
        build_appliance(config, handle_signals=False, control=True)


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8080", True),
        ("localhost", True),
        ("[::1]:8080", True),
        ("evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("", False),
        ("192.168.1.2:8080", False),
    ],
)
def test_host_header_check(host: str, ok: bool):
    assert host_header_is_loopback(host) is ok
