"""The one configuration tree: a TOML file, then ``APPLIANCE_*`` environment overrides, then secrets.

We load and merge by hand instead of using pydantic-settings because every error must name where the bad
value came from (a TOML path or an environment variable) and unknown ``APPLIANCE_`` variables must be errors,
not silently ignored typos.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator

from appliance.settings.agent import ResponseHooksConfig, TracingConfig
from appliance.settings.audio import AudioConfig
from appliance.settings.brains import FailoverConfig, RemoteConfig, ServerConfig
from appliance.settings.control import ControlConfig
from appliance.settings.conversation import (
    ConversationConfig,
    LLMConfig,
    OpenAIServerConfig,
    STTConfig,
    TTSConfig,
    share_openai_server,
)
from appliance.settings.hardware import HardwareConfig
from appliance.settings.home_assistant import HomeAssistantConfig
from appliance.settings.listening import ListeningConfig
from appliance.settings.mqtt import MqttConfig
from appliance.settings.secrets import fill_secrets, is_secret_path, redact
from appliance.settings.system import LogConfig, SupervisorConfig
from appliance.settings_base import ConfigError, Section

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("/etc/appliance/appliance.toml")
ENV_PREFIX = "APPLIANCE_"
CONFIG_PATH_ENV = "APPLIANCE_CONFIG"
# Variables with our prefix that are not config keys.
_NOT_OVERRIDES = {CONFIG_PATH_ENV}


class AppConfig(Section):
    audio: AudioConfig = AudioConfig()
    listening: ListeningConfig = ListeningConfig()
    conversation: ConversationConfig = ConversationConfig()
    openai: OpenAIServerConfig = Field(
        default=OpenAIServerConfig(), description="one OpenAI-compatible server for stt, llm and tts"
    )
    stt: STTConfig = STTConfig()
    llm: LLMConfig = LLMConfig()
    tts: TTSConfig = TTSConfig()
    response_hooks: ResponseHooksConfig = ResponseHooksConfig()
    tracing: TracingConfig = TracingConfig()
    hardware: HardwareConfig = Field(
        default=HardwareConfig(),
        validation_alias=AliasChoices("hardware", "gpio"),
        description="[gpio] is the old name",
    )
    remote: RemoteConfig = RemoteConfig()
    failover: FailoverConfig = FailoverConfig()
    server: ServerConfig = ServerConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    log: LogConfig = LogConfig()
    control: ControlConfig = ControlConfig()
    home_assistant: HomeAssistantConfig = HomeAssistantConfig()
    mqtt: MqttConfig = MqttConfig()

    @field_validator("listening")
    @classmethod
    def _listening_installed(cls, listening: ListeningConfig) -> ListeningConfig:
        # The named wake word models and the echo canceller's wheel must exist on this machine; asked here, one
        # layer above both subsystems, so the error still names [listening].
        if listening.mode == "wake_word" and listening.wake_word.engine == "micro":
            from appliance.listening.wakeword import WakeWordError, resolve_model

            for entry in listening.wake_word.models:
                try:
                    resolve_model(entry)
                except WakeWordError as exc:
                    raise ValueError(str(exc)) from None
        if listening.echo_cancel == "webrtc":
            from appliance.audio.echo_engines import resolve_backend

            resolve_backend(listening.echo_cancel)  # raises ValueError: no wheel on this platform
        return listening

    @model_validator(mode="before")
    @classmethod
    def _old_section_names(cls, data: Any) -> Any:
        # [gpio] (the skeleton's name) next to [hardware], e.g. an old APPLIANCE_GPIO__* override: merge them.
        if isinstance(data, dict) and isinstance(data.get("gpio"), dict) and isinstance(data.get("hardware"), dict):
            data = dict(data)
            data["hardware"] = {**data.pop("gpio"), **data["hardware"]}
        if isinstance(data, dict):
            data = share_openai_server(data)
        return data

    @model_validator(mode="after")
    def _remember_secrets(self) -> AppConfig:
        # A provider that quotes our key back in an error must not get it into logs, events or the API.
        from appliance.errors import remember_secret

        def walk(node: Any) -> None:
            if isinstance(node, SecretStr):
                remember_secret(node.get_secret_value())
            elif isinstance(node, BaseModel):
                for name in type(node).model_fields:
                    walk(getattr(node, name))
            elif isinstance(node, (list, tuple)):
                for item in node:
                    walk(item)
            elif isinstance(node, dict):
                for item in node.values():
                    walk(item)

        walk(self)
        return self

    def redacted(self) -> dict[str, Any]:
        """The configuration as JSON-able data with every secret replaced by a marker."""
        return redact(self.model_dump(mode="json"))


def user_config_path(environ: Mapping[str, str]) -> Path:
    """This user's file: ``$XDG_CONFIG_HOME/appliance/appliance.toml`` (default ``~/.config/...``)."""
    base = environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative value is invalid and ignored
        home = environ.get("HOME")
        if not home:
            try:
                home = str(Path.home())
            except RuntimeError:  # no HOME and no passwd entry
                home = "/"
        base = os.path.join(home, ".config")
    return Path(base) / "appliance" / "appliance.toml"


def config_path(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read: the one asked for (``--config``, else ``$APPLIANCE_CONFIG``), else this user's file,
    else the system's (``/etc/appliance/appliance.toml``), each if it exists; None = built-in defaults."""
    if explicit is not None:
        return explicit
    if environ.get(CONFIG_PATH_ENV):
        return Path(environ[CONFIG_PATH_ENV])
    user = user_config_path(environ)
    if user.is_file():
        return user
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def editable_config_path(explicit: Path | None, environ: Mapping[str, str]) -> Path:
    """The file ``config set`` changes: the one read, else this user's file (created by the first change)."""
    return config_path(explicit, environ) or user_config_path(environ)


STARTER_CONFIG = """\
# appliance configuration (written by `appliance init`). Every setting and its default:
# `appliance check-config --show`; change one from the shell: `appliance config set listening.mode="wake_word"`.
# API keys never go here: OPENAI_API_KEY=... in the environment (or systemd credentials).

[audio]
input = "auto"          # auto | device | simulated | file   (auto = the sound card if there is one)
output = "auto"

[listening]
mode = "always"         # always | wake_word | push_to_talk | muted

[conversation]
brain = "auto"          # auto | cloud | remote | offline   (auto = cloud when keys are configured)

# Your own OpenAI-compatible server for speech-to-text, the LLM and text-to-speech (README: "Your own server"):
# [openai]
# base_url = "http://127.0.0.1:4000/v1"
"""


def write_starter_config(path: Path, *, force: bool = False) -> Path:
    """Write :data:`STARTER_CONFIG` to ``path`` (FileExistsError if it exists and not ``force``)."""
    from appliance.files import atomic_write

    if path.exists() and not force:
        raise FileExistsError(path)
    atomic_write(path, STARTER_CONFIG.encode("utf-8"), mode=0o600, keep_previous=path.with_name(path.name + ".prev"))
    return path


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> AppConfig:
    environ = os.environ if environ is None else environ
    chosen = config_path(path, environ)
    data: dict[str, Any] = {}
    source = str(chosen) if chosen else "built-in defaults"
    if chosen is not None:
        data = read_toml(chosen)
    origins = apply_env_overrides(data, environ)
    if origins:
        source += " + environment"
    fill_secrets(data, environ)
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, describe_errors(exc, origins)) from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except PermissionError:
        raise ConfigError(str(path), ["permission denied"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"invalid TOML: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text: {exc}"]) from None


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Merge ``APPLIANCE_SECTION__KEY=value`` into ``data``; returns which paths came from which variable.

    Values stay strings (pydantic converts "5", "true", "-40" itself) except those that look like JSON
    lists or objects.
    """
    origins: dict[tuple[str, ...], str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in _NOT_OVERRIDES:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if not all(path):
            continue
        raw = environ[name]
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        target = data
        for key in path[:-1]:
            child = target.get(key)
            if not isinstance(child, dict):
                child = {}
                target[key] = child
            target = child
        target[path[-1]] = value
        origins[path] = name
    return origins


# provider -> (standard environment variable, systemd credential name)
def describe_errors(exc: ValidationError, origins: Mapping[tuple[str, ...], str]) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        where = ".".join(loc) or "(top level)"
        env = next((origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), None)
        if env is None and error["type"] == "extra_forbidden":  # a misspelt section: the variable goes deeper
            env = next((name for path, name in origins.items() if path[: len(loc)] == loc), None)
        if env:
            where += f" (from ${env})"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
            better = _closest_key(loc)
            if better and env:
                parts = env[len(ENV_PREFIX) :].split("__")
                parts[len(loc) - 1] = better.upper()
                message += f"; did you mean ${ENV_PREFIX}{'__'.join(parts)}?"
            elif better:
                message += f"; did you mean {'.'.join((*loc[:-1], better))}?"
        elif "input" in error and not is_secret_path(loc) and not isinstance(error["input"], dict):
            shown = repr(error["input"])
            message += f", got {shown[:60]}"
        problems.append(f"{where}: {message}")
    return problems


def _closest_key(loc: tuple[str, ...]) -> str | None:
    """The known setting nearest to a misspelt one (``listenning`` -> ``listening``), if one is near."""
    import typing

    from pydantic import BaseModel

    model: Any = AppConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
        if typing.get_origin(model) is not None:  # Optional[...], dict[...], list[...]: settle for a model inside
            model = next((a for a in typing.get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    close = difflib.get_close_matches(loc[-1].lower(), list(model.model_fields), n=1, cutoff=0.7)
    return close[0] if close else None
