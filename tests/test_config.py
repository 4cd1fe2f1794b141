from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import AppConfig, load_config
from appliance.settings_base import ConfigError


def test_defaults_need_no_file_no_keys() -> None:
    config = load_config(None, environ={})
    assert config.conversation.brain == "auto"
    assert config.stt.api_key is None
    assert config.listening.volume_db_threshold == -40.0


def test_toml_file_then_environment_overrides(tmp_path: Path) -> None:
    file = tmp_path / "a.toml"
    file.write_text('[llm]\nprovider = "anthropic"\nmax_tokens = 100\n[listening]\nsilence_duration = 0.8\n')
    env = {"APPLIANCE_LLM__MAX_TOKENS": "200", "APPLIANCE_CONVERSATION__SYSTEM_PROMPT_PARAMS": '{"name": "Ada"}'}
    config = load_config(file, environ=env)
    assert config.llm.provider == "anthropic"
    assert config.llm.max_tokens == 200
    assert config.listening.silence_duration == 0.8
    assert config.conversation.system_prompt_params == {"name": "Ada"}
    assert config.llm.model_name.startswith("claude")


def test_every_error_is_reported_with_its_path(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text('[llm]\ntemperature = "hot"\n[audio]\nblock_ms = 3\n[nonsense]\nx = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={"APPLIANCE_TTS__SPED": "2"})
    problems = "\n".join(caught.value.problems)
    assert "llm.temperature" in problems and "'hot'" in problems
    assert "audio.block_ms" in problems
    assert "nonsense: unknown setting" in problems
    assert "tts.sped (from $APPLIANCE_TTS__SPED): unknown setting" in problems
    assert len(caught.value.problems) == 4


def test_broken_toml_names_the_line(tmp_path: Path) -> None:
    file = tmp_path / "broken.toml"
    file.write_text("[llm]\nmodel = \n")
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert "invalid TOML" in caught.value.problems[0] and "line 2" in caught.value.problems[0]


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_keys_come_from_provider_variables_and_credentials(tmp_path: Path) -> None:
    config = load_config(None, environ={"OPENAI_API_KEY": "sk-env"})
    assert config.stt.api_key is not None and config.stt.api_key.get_secret_value() == "sk-env"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "anthropic_api_key").write_text("sk-ant-file\n")
    config = load_config(None, environ={"CREDENTIALS_DIRECTORY": str(creds), "APPLIANCE_LLM__PROVIDER": "anthropic"})
    assert config.llm.api_key is not None and config.llm.api_key.get_secret_value() == "sk-ant-file"
    assert config.stt.api_key is None


def test_secrets_never_show(tmp_path: Path) -> None:
    config = load_config(None, environ={"OPENAI_API_KEY": "sk-very-secret"})
    assert "sk-very-secret" not in repr(config)
    assert "sk-very-secret" not in str(config.redacted())
    file = tmp_path / "bad.toml"
    file.write_text("[llm]\napi_key = 5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert "5" not in caught.value.problems[0].split(":", 1)[1].replace("api_key", "")


def test_wrong_values_in_sections() -> None:
    with pytest.raises(Exception, match="used twice"):
        AppConfig.model_validate({"gpio": {"status_led": [5, 6, 5]}})
    with pytest.raises(Exception, match="input_file"):
        AppConfig.model_validate({"audio": {"input": "file"}})
    with pytest.raises(Exception, match="min_duration"):
        AppConfig.model_validate({"listening": {"min_duration": 5, "max_duration": 2}})


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_cli_check_config_exits_2_listing_errors(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text('[listening]\nmode = "sometimes"\nsilence_duration = -1\n')
    result = _cli("--config", str(file), "check-config")
    assert result.returncode == 2
    assert "listening.mode" in result.stderr and "listening.silence_duration" in result.stderr


def test_cli_run_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    result = _cli("run", env={"APPLIANCE_AUDIO__BLOCK_MS": "abc"})
    assert result.returncode == 2
    assert "audio.block_ms (from $APPLIANCE_AUDIO__BLOCK_MS)" in result.stderr
    assert "ready" not in result.stdout


def test_cli_cloud_brain_without_key_is_a_config_error() -> None:
    result = _cli("check-config", env={"APPLIANCE_CONVERSATION__BRAIN": "cloud"})
    assert result.returncode == 2
    assert "stt.api_key" in result.stderr and "OPENAI_API_KEY" in result.stderr


def test_cli_check_config_ok_shows_redacted() -> None:
    result = _cli("check-config", "--show", env={"OPENAI_API_KEY": "sk-hidden-value"})
    assert result.returncode == 0, result.stderr
    assert "brain=cloud" in result.stdout
    assert "sk-hidden-value" not in result.stdout and "**********" in result.stdout
