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

from appliance.config import (
    SECRET_MARKERS,
    AppConfig,
    ConfigError,
    apply_env_overrides,
    describe_errors,
    fill_secrets,
    read_toml,
)
from appliance.control.files import atomic_write


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


def _secret_paths(patch: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[str]:
    found = []
    for key, value in patch.items():
        path = (*prefix, str(key))
        if any(marker in str(key) for marker in SECRET_MARKERS) and not str(key).endswith("_file"):
            found.append(".".join(path))
        elif isinstance(value, dict):
            found.extend(_secret_paths(value, path))
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
    secrets = _secret_paths(patch)
    if secrets:
        raise PatchRejected(
            [(p, "secrets cannot be set through the API; use the environment or a credentials file") for p in secrets]
        )
    try:
        current = read_toml(path) if path.exists() else {}
    except ConfigError as exc:
        raise PatchRejected([(str(path), p) for p in exc.problems]) from None
    new = _strip_nones(merge_patch(current, patch))
    config = validate(new, environ)
    text = render_config(path, patch)
    if tomllib.loads(text) != new:  # the comment-keeping writer must say exactly what was validated
        text = tomlkit.dumps(new)
    return text, config


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
