"""Scenario files: TOML, JSON or YAML, validated so a mistake names its place in the file."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# A scenario file is a few kilobytes of text; anything near this is a mistake (a WAV, a log) or an attack.
MAX_FILE_BYTES = 1_000_000
MAX_TURNS = 50
MAX_INPUT_CHARS = 4000


class ScenarioError(ValueError):
    """The scenario file cannot be used; the message names the file and what is wrong where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TurnSpec(_Strict):
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, description="what the user says")
    criteria: str | None = Field(default=None, max_length=MAX_INPUT_CHARS, description="judged by the judge model")
    check: str | None = Field(default=None, description="'module:function' judging the reply in Python")

    @field_validator("input")
    @classmethod
    def _spoken(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input is blank")
        return value


class ScenarioSpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    goal: str | None = Field(default=None, max_length=MAX_INPUT_CHARS, description="what the whole dialog must reach")
    goal_check: str | None = Field(default=None, description="'module:function' judging the whole dialog")
    turns: list[TurnSpec] = Field(min_length=1, max_length=MAX_TURNS)

    def digest(self, context: str) -> str:
        """Identifies this scenario as run against one prompt and model: a change of either runs it again."""
        text = json.dumps({"scenario": self.model_dump(mode="json"), "context": context}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class JudgeSpec(_Strict):
    """The judge model; unset fields come from the robot's own ``[llm]`` section."""

    provider: Literal["openai", "anthropic", "gemini"] | None = None
    model: str | None = None
    base_url: str | None = None
    timeout: float = Field(default=60.0, gt=0, le=600)


class ScenarioFile(_Strict):
    judge: JudgeSpec = JudgeSpec()
    scenario: list[ScenarioSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> ScenarioFile:
        seen: set[str] = set()
        for spec in self.scenario:
            if spec.name in seen:
                raise ValueError(f"two scenarios are named {spec.name!r}; results are kept by name")
            seen.add(spec.name)
        return self


def load_scenarios(path: Path) -> ScenarioFile:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size > MAX_FILE_BYTES:
        raise ScenarioError(f"{path}: {size} bytes; a scenario file may be at most {MAX_FILE_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read as UTF-8 text: {exc}") from None
    data = _parse(path, text)
    try:
        return ScenarioFile.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{path}: " + "; ".join(_describe(error) for error in exc.errors())) from None


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ScenarioError(
                    f"{path}: YAML needs PyYAML (pip install pyyaml); TOML and JSON need nothing"
                ) from None
            return yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, ScenarioError):
            raise
        raise ScenarioError(f"{path}: not valid {suffix[1:].upper()}: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - yaml's own error tree; the message is what the user needs
        raise ScenarioError(f"{path}: not valid YAML: {_first_line(exc)}") from None
    raise ScenarioError(f"{path}: unknown kind of file {suffix or '(no extension)'!r}; use .toml, .json or .yaml")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    return f"{where}: {error['msg']}"
