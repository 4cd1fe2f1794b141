"""``[home_assistant]``: off by default, the key checked and never shown, the brain needs the server."""

from __future__ import annotations

import json

import pytest

from appliance.app import build_appliance
from appliance.config import AppConfig, load_config
from appliance.settings_base import ConfigError
from tests.esphome_helpers import KEY, esphome_config


def test_off_by_default() -> None:
    config = AppConfig()
    assert config.home_assistant.esphome is False
    assert config.home_assistant.port == 6053
    app = build_appliance(config.model_copy(update={}), handle_signals=False)
    assert "esphome" not in app.supervisor.records


@pytest.mark.parametrize("key", ["not base64 at all!", "c2hvcnQ=", KEY + KEY])
def test_a_bad_key_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"APPLIANCE_HOME_ASSISTANT__ENCRYPTION_KEY": key, "APPLIANCE_CONFIG": "/dev/null"})
    assert "home_assistant.encryption_key" in caught.value.report()
    assert key not in caught.value.report()


def test_the_key_is_a_secret() -> None:
    config = esphome_config(encryption_key=KEY)
    assert config.home_assistant.psk() is not None and len(config.home_assistant.psk() or b"") == 32
    assert KEY not in json.dumps(config.redacted())
    assert KEY not in repr(config)


def test_the_brain_needs_the_server() -> None:
    config = AppConfig.model_validate({"conversation": {"brains": ["home_assistant", "offline"]}})
    with pytest.raises(ConfigError, match="home_assistant.esphome"):
        build_appliance(config, handle_signals=False)


def test_the_server_is_supervised_when_on() -> None:
    app = build_appliance(esphome_config(), handle_signals=False)
    assert app.supervisor.records["esphome"].required is False
    assert app.brain.name == "home_assistant"
