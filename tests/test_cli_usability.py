"""What a new user trips over in the first hour: config file order, typos, option positions, pipes."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance.cli import _parser, main
from appliance.config import DEFAULT_PATH, config_path, editable_config_path, load_config, user_config_path
from appliance.settings_base import ConfigError


def test_user_config_path_follows_xdg(tmp_path: Path) -> None:
    assert user_config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "appliance" / "appliance.toml"
    assert user_config_path({"HOME": "/home/ann"}) == Path("/home/ann/.config/appliance/appliance.toml")
    # A relative XDG_CONFIG_HOME is invalid by the spec and ignored.
    assert user_config_path({"XDG_CONFIG_HOME": "rel", "HOME": "/home/ann"}).parts[:3] == ("/", "home", "ann")


def test_config_files_are_found_explicit_then_user_then_system(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    user = user_config_path(env)
    system = DEFAULT_PATH if DEFAULT_PATH.exists() else None
    assert config_path(None, env) == system
    assert editable_config_path(None, env) == (system or user)  # where `config set` writes: created on demand
    user.parent.mkdir(parents=True)
    user.write_text('[listening]\nmode = "push_to_talk"\n')
    assert config_path(None, env) == user
    assert load_config(None, env).listening.mode == "push_to_talk"
    explicit = tmp_path / "mine.toml"
    explicit.write_text("")
    assert config_path(None, {**env, "APPLIANCE_CONFIG": str(explicit)}) == explicit
    assert config_path(explicit, env) == explicit


def test_init_writes_a_valid_starter_file_once(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("APPLIANCE_CONFIG", raising=False)
    target = tmp_path / "appliance" / "appliance.toml"
    assert main(["init"]) == 0
    assert str(target) in capsys.readouterr().out
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    load_config(target, {})  # valid as written
    assert "mode" in tomllib.loads(target.read_text())["listening"]
    assert main(["init"]) == 1  # never overwrites by surprise
    assert "exists already" in capsys.readouterr().err
    assert main(["init", "--force"]) == 0
    assert (tmp_path / "appliance" / "appliance.toml.prev").exists()
    assert main(["check-config"]) == 0  # found without --config
    assert "configuration OK" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("APPLIANCE_LISTENNING__MODE", "$APPLIANCE_LISTENING__MODE"),
        ("APPLIANCE_LISTENING__SILENCE_DURATON", "$APPLIANCE_LISTENING__SILENCE_DURATION"),
        ("APPLIANCE_TTS__VOICES", None),  # a real key: not a typo
    ],
)
def test_an_environment_typo_names_the_variable_and_the_right_spelling(variable: str, suggestion: str | None) -> None:
    if suggestion is None:
        load_config(None, {variable: "{}"})
        return
    with pytest.raises(ConfigError) as caught:
        load_config(None, {variable: "1"})
    (problem,) = caught.value.problems
    assert f"(from ${variable})" in problem
    assert problem.endswith(f"did you mean {suggestion}?")


def test_a_file_typo_suggests_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("[listening]\nsilence_duraton = 1\n[nonsense]\nx = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert (
        "listening.silence_duraton: unknown setting; did you mean listening.silence_duration?" in caught.value.problems
    )
    assert "nonsense: unknown setting" in caught.value.problems  # nothing near: no guess


def test_one_base_url_serves_every_openai_role(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(
        '[openai]\nbase_url = "http://127.0.0.1:4000/v1"\n'
        '[stt]\nbase_url = "http://127.0.0.1:8000/v1"\n'  # a section may still name its own
        '[tts.voices.ja]\nprovider = "voicevox"\n[tts.voices.en]\nvoice = "nova"\n'
    )
    config = load_config(path, {})
    assert config.stt.base_url == "http://127.0.0.1:8000/v1"
    assert config.llm.base_url == config.tts.base_url == "http://127.0.0.1:4000/v1"
    assert config.tts.voices["en"].base_url == "http://127.0.0.1:4000/v1"
    assert config.tts.voices["ja"].base_url is None  # not an OpenAI voice
    gemini = load_config(None, {"APPLIANCE_OPENAI__BASE_URL": "http://x/v1", "APPLIANCE_LLM__PROVIDER": "gemini"})
    assert gemini.llm.base_url is None and gemini.stt.base_url == "http://x/v1"


def test_a_keyless_own_server_selects_the_cloud_brain(tmp_path: Path, capsys) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[openai]\nbase_url = "http://127.0.0.1:4000/v1"\n')
    assert main(["check-config", "--config", str(path)]) == 0
    assert "brain=cloud" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "f.toml", "--json", "--url", "http://h:1", "--token", "t", "events"],
        ["events", "--config", "f.toml", "--json", "--url", "http://h:1", "--token", "t"],
        ["--config", "f.toml", "events", "--json", "--url", "http://h:1", "--token", "t"],
        ["--json", "--token", "t", "events", "-c", "f.toml", "--url", "http://h:1"],
    ],
)
def test_global_options_work_before_and_after_the_verb(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    assert (args.command, args.config, args.json, args.url, args.token) == (
        "events",
        Path("f.toml"),
        True,
        "http://h:1",
        "t",
    )


def test_global_options_after_the_verb_on_local_commands(tmp_path: Path, capsys) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[listening]\nmode = "push_to_talk"\n')
    assert main(["check-config", "--config", str(path)]) == 0
    assert "listening=push_to_talk" in capsys.readouterr().out
    args = _parser().parse_args(["--json", "status"])
    assert args.json is True and args.config is None


def _run_into_a_closed_pipe(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with stdout a pipe whose reader has already gone, as after ``| head -1``."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "appliance", *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=60,
            env={**os.environ, "APPLIANCE_CONFIG": ""},
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("argv", [["check-config", "--show"], ["check-config"], ["--help"]])
def test_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    done = _run_into_a_closed_pipe(*argv)
    assert done.stderr == b""
    assert done.returncode == 0
