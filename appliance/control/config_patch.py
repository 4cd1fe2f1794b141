"""``PATCH /config``: merge a JSON patch into the TOML file, validate it like a fresh start would, write it.

The patch follows JSON Merge Patch (RFC 7386): objects merge, ``null`` removes a setting (back to its
default). It is merged into what the *file* says, not into the running configuration, so environment
overrides and secrets never end up written to disk. Validation runs the same loader as start-up
(environment overrides and secrets applied), so a patch that would stop the appliance from starting is
refused with the field paths at fault and changes nothing.

The file is edited with tomlkit rather than re-serialized, so the comments and layout a person wrote in
it survive an API change; if its edit ever disagreed with what was validated, the plain rendering is used.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import ValidationError

from appliance.config import AppConfig, apply_env_overrides, describe_errors, read_toml
from appliance.files import atomic_write
from appliance.settings.secrets import SECRET_TABLES, fill_secrets, is_secret_key
from appliance.settings_base import ConfigError


class PatchRejected(Exception):
    """The patch cannot be applied; ``problems`` are ``(path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Where a credential (or the conversation, for traces) is sent: changing one would send the robot's key or
# what its users say to a host of the caller's choice.
ENDPOINT_FIELDS = frozenset({"base_url", "url", "region", "endpoint"})
# Code the appliance runs or imports: a command or hook could read the keys from the environment.
CODE_FIELDS = frozenset(
    {
        "command",
        "function",
        "hook",
        "preprocess",
        "postprocess",
        "on_finish",
        "on_start",
        "on_chunk",
        "on_final",
        "on_error",
    }
)
# What the model's tools may reach: widening it would let a caller walk the robot's own network.
REACH_FIELDS = frozenset({"allow_private", "allow_networks"})
LOCKED_WHY = {
    "secret": "secrets cannot be set through the API; use the environment or a credentials file",
    "endpoint": "where a credential is sent cannot be changed through the API; edit the file on the robot",
    "code": "what code the appliance runs cannot be changed through the API; edit the file on the robot",
    "reach": "what the robot's tools may reach cannot be widened through the API; edit the file on the robot",
}


def locked_paths(patch: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``(path, why)`` for every setting in ``patch`` the API may not touch, lists and tables included."""
    found: list[tuple[str, str]] = []
    for key, value in patch.items():
        name = str(key)
        path = (*prefix, name)
        if is_secret_key(name) or name in SECRET_TABLES:
            found.append((".".join(path), "secret"))
        elif name in ENDPOINT_FIELDS:
            found.append((".".join(path), "endpoint"))
        elif name in CODE_FIELDS:
            found.append((".".join(path), "code"))
        elif name in REACH_FIELDS:
            found.append((".".join(path), "reach"))
        elif isinstance(value, dict):
            found.extend(locked_paths(value, path))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    found.extend(locked_paths(item, (*path, str(index))))
    return found


def _provider_moves(patch: Mapping[str, Any], new: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[str]:
    """A new ``provider`` in a section that names its own endpoint would send that provider's key there."""
    found = []
    for key, value in patch.items():
        target = new.get(key) if isinstance(new, Mapping) else None
        if key == "provider" and isinstance(new, Mapping) and any(new.get(f) for f in ENDPOINT_FIELDS):
            found.append(".".join((*prefix, str(key))))
        elif isinstance(value, dict) and isinstance(target, Mapping):
            found.extend(_provider_moves(value, target, (*prefix, str(key))))
    return found


def _strip_nones(value: Any) -> Any:
    """TOML has no null: a key set to None is left out (which means 'the default')."""
    if isinstance(value, dict):
        return {k: _strip_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nones(v) for v in value if v is not None]
    return value


def validate(data: dict[str, Any], environ: Mapping[str, str]) -> AppConfig:
    effective = copy.deepcopy(data)
    origins = apply_env_overrides(effective, environ)
    fill_secrets(effective, environ)
    try:
        return AppConfig.model_validate(effective)
    except ValidationError as exc:
        problems = [line.split(": ", 1) for line in describe_errors(exc, origins)]
        raise PatchRejected([(p[0], p[1] if len(p) > 1 else "") for p in problems]) from None


def plan_patch(path: Path, patch: dict[str, Any], environ: Mapping[str, str] | None = None) -> tuple[str, AppConfig]:
    """The new file text and the configuration it gives; raises PatchRejected when it is bad."""
    environ = os.environ if environ is None else environ
    if not patch:
        raise PatchRejected([("(top level)", "empty patch")])
    locked = locked_paths(patch)
    if locked:
        raise PatchRejected([(path, LOCKED_WHY[why]) for path, why in locked])
    try:
        current = read_toml(path) if path.exists() else {}
    except ConfigError as exc:
        raise PatchRejected([(str(path), p) for p in exc.problems]) from None
    new = _strip_nones(merge_patch(current, patch))
    moves = _provider_moves(patch, new)
    if moves:
        raise PatchRejected([(path, LOCKED_WHY["endpoint"]) for path in moves])
    config = validate(new, environ)
    check_startable(config, patch, environ)
    text = render_config(path, patch)
    if tomllib.loads(text) != new:  # the comment-keeping writer must say exactly what was validated
        text = tomlkit.dumps(new)
    return text, config


def check_startable(config: AppConfig, patch: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """Refuse what a valid model would still fail at the next start: the checks start-up makes.

    The control API's token and bind, the cloud brain's keys, and every file a patched setting names.
    """
    from appliance.auth import ControlSetupError, check_bind, resolve_token

    problems: list[tuple[str, str]] = []
    if config.control.enabled:
        try:
            check_bind(config.control, resolve_token(config.control, environ))
        except ControlSetupError as exc:
            problems.append(("control", str(exc)))
    problems.extend(_brain_problems(config))
    problems.extend(_optional_parts(config))
    problems.extend(_missing_files(config, patch))
    if problems:
        raise PatchRejected(problems)


def _optional_parts(config: AppConfig) -> list[tuple[str, str]]:
    """Response hooks that will not load, tracing without its SDK: what would stop the next start."""
    from appliance.assembly.brains import build_response_hooks, build_tracing
    from appliance.bus import EventBus

    try:
        build_response_hooks(EventBus(), config)
        tracing = build_tracing(config)
    except ConfigError as exc:
        return [(p.split(": ", 1)[0], p.split(": ", 1)[1]) if ": " in p else (p, "") for p in exc.problems]
    if tracing is not None:
        tracing.shutdown()
    return []


def _brain_problems(config: AppConfig) -> list[tuple[str, str]]:
    """A patch that selects the cloud brain without the keys it needs is refused like a bad value."""
    from appliance.assembly.brains import brain_plan, cloud_brain_factory
    from appliance.conversation.local_voice import LocalVoice

    if "cloud" not in brain_plan(config):
        return []
    try:
        cloud_brain_factory(config, LocalVoice())
    except ConfigError as exc:
        return [(p.split(": ", 1)[0], p.split(": ", 1)[1]) if ": " in p else (p, "") for p in exc.problems]
    return []


_WRITTEN_PATHS = ("state_dir", "output_file")  # created by the appliance, need not exist


def _missing_files(config: Any, patch: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for key, value in patch.items():
        current = getattr(config, str(key), None) if not isinstance(config, Mapping) else config.get(key)
        path = (*prefix, str(key))
        if isinstance(value, dict) and current is not None:
            problems.extend(_missing_files(current, value, path))
        elif str(key) not in _WRITTEN_PATHS:
            files = current if isinstance(current, list | tuple) else [current]
            for file in files:
                if isinstance(file, Path) and not file.exists():
                    problems.append((".".join(path), f"{file}: no such file"))
    return problems


def _update_document(doc: Any, patch: Mapping[str, Any]) -> None:
    """Apply a merge patch to a tomlkit document in place, so the file's comments and layout survive."""
    for key, value in patch.items():
        if value is None:
            if key in doc:
                del doc[key]
        elif isinstance(value, dict) and isinstance(doc.get(key), dict):
            _update_document(doc[key], value)
        else:
            doc[key] = _strip_nones(value)


def render_config(path: Path, patch: Mapping[str, Any]) -> str:
    """The file's text with ``patch`` applied, keeping its comments."""
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except OSError as exc:
        raise PatchRejected([(str(path), f"cannot read: {exc.strerror or exc}")]) from None
    doc = tomlkit.parse(text)
    _update_document(doc, patch)
    return tomlkit.dumps(doc)


def write_config(path: Path, text: str) -> Path:
    """Write the new file in one step, keeping the file it replaces as ``<name>.prev``."""
    previous = path.with_name(path.name + ".prev")
    body = text.encode("utf-8")
    mode = 0o600
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        pass
    atomic_write(path, body, mode=mode, keep_previous=previous)
    return previous


def changed_sections(old: AppConfig, new: AppConfig) -> dict[str, set[str]]:
    """Top-level sections that differ, each with the names of its changed fields."""
    changes: dict[str, set[str]] = {}
    for name in type(old).model_fields:
        a, b = getattr(old, name), getattr(new, name)
        if a == b:
            continue
        fields = {f for f in type(a).model_fields if getattr(a, f) != getattr(b, f)}
        changes[name] = fields
    return changes
