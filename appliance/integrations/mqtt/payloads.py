"""What the robot accepts on its MQTT topics, parsed strictly: anything else is a :class:`CommandRejected`.

Per-robot commands take the plain payloads Home Assistant sends (``ON``/``OFF``, ``0.5``, a face name, the
text to say, ``PRESS``); ``say`` also takes a JSON object. Fleet messages (``<fleet>/say``, ``<fleet>/mute``)
may carry an ``id`` and a send time ``at`` (Unix seconds) so a retained one is acted on once, not on every
reconnect (:class:`ReplayFilter`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from appliance.commands import CommandRejected

_TRUE = {"on", "true", "1", "yes"}
_FALSE = {"off", "false", "0", "no"}


def text_of(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandRejected("payload is not UTF-8 text") from None


def json_object(text: str) -> dict[str, Any] | None:
    """The payload as a JSON object when it looks like one (starts with ``{``), else None."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise CommandRejected("payload is not valid JSON") from None
    if not isinstance(value, dict):
        raise CommandRejected("payload must be a JSON object")
    return value


def parse_bool(payload: bytes) -> bool:
    text = text_of(payload).strip()
    obj = json_object(text)
    if obj is not None:
        value = obj.get("muted", obj.get("state"))
        if isinstance(value, bool):
            return value
        text = value if isinstance(value, str) else ""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise CommandRejected("expected ON or OFF")


def parse_number(payload: bytes) -> float:
    text = text_of(payload).strip()
    try:
        value = float(text)
    except ValueError:
        raise CommandRejected("expected a number") from None
    if not math.isfinite(value):
        raise CommandRejected("expected a finite number")
    return value


def parse_name(payload: bytes) -> str:
    text = text_of(payload).strip()
    if not text:
        raise CommandRejected("expected a name")
    return text


@dataclass(frozen=True)
class SayCommand:
    text: str
    interrupt: bool = False
    face: str | None = None
    key: str = ""  # the message's id (or a digest of it), for replay filtering
    at: float | None = None  # when it was sent (Unix seconds), if the sender said


def _key(obj: dict[str, Any] | None, payload: bytes) -> str:
    given = obj.get("id") if obj is not None else None
    if isinstance(given, str | int) and not isinstance(given, bool) and str(given):
        return str(given)[:100]
    return hashlib.sha256(payload).hexdigest()[:16]


def _at(obj: dict[str, Any] | None) -> float | None:
    value = obj.get("at") if obj is not None else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CommandRejected("at must be a time in Unix seconds")
    return float(value)


def parse_say(payload: bytes) -> SayCommand:
    text = text_of(payload)
    obj = json_object(text)
    if obj is None:
        return SayCommand(text, key=_key(None, payload))
    said = obj.get("text")
    if not isinstance(said, str):
        raise CommandRejected("text must be a string")
    interrupt = obj.get("interrupt", False)
    if not isinstance(interrupt, bool):
        raise CommandRejected("interrupt must be true or false")
    face = obj.get("face")
    if face is not None and not isinstance(face, str):
        raise CommandRejected("face must be a face name")
    return SayCommand(said, interrupt, face, _key(obj, payload), _at(obj))


@dataclass(frozen=True)
class MuteCommand:
    muted: bool
    key: str


def parse_fleet_mute(payload: bytes) -> MuteCommand:
    obj = json_object(text_of(payload))
    return MuteCommand(parse_bool(payload), _key(obj, payload))


class ReplayFilter:
    """Decides which fleet messages to act on, so a retained one is not replayed on every reconnect.

    A live message (the broker's retain flag is 0: it was published while we were subscribed) is always
    acted on. A retained one arrives again on every (re)subscribe: it is acted on only if it differs from
    the last one handled on that topic, and (for say) only while it is fresh.
    """

    def __init__(self) -> None:
        self.last: dict[str, str] = {}

    def admit(self, topic: str, key: str, *, retained: bool, fresh: bool = True) -> bool:
        if retained and self.last.get(topic) == key:
            return False
        self.last[topic] = key
        return fresh or not retained
