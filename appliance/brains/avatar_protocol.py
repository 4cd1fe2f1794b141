"""The AIAvatarKit WebSocket protocol (0.9.x) as far as both our client and our server need it.

JSON text frames on ``/ws``. The client sends ``start``, ``data``, ``invoke``, ``config`` and ``stop``, each with
a ``session_id``; the server answers with one envelope (``type``, ``session_id``, ``context_id``,
``transaction_id``, ``text``, ``voice_text``, ``avatar_control_request``, ``audio_data``, ``metadata`` ...).
Audio from the client is base64 raw PCM s16le 16 kHz mono; speech from the server is a base64 WAV per
sentence, or in PCM mode a descriptor chunk followed by raw PCM chunks sharing its ``audio_id``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from appliance.audio.base import CAPTURE_RATE, AudioClip
from appliance.audio.convert import resample
from appliance.turns import Tag

CLIENT_TYPES = frozenset({"start", "data", "invoke", "config", "stop"})
SERVER_TYPES = frozenset(
    {"connected", "voiced", "accepted", "start", "chunk", "tool_call", "final", "vision", "stop", "canceled", "error"}
)


class ProtocolError(ValueError):
    """A frame that breaks the protocol; the message says which field and why."""


def b64decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"{what} is not valid base64: {exc}") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pcm16k(clip: AudioClip) -> bytes:
    """The clip as the protocol's client audio: raw s16le PCM, 16 kHz mono."""
    if clip.sample_rate == CAPTURE_RATE:
        return clip.pcm()
    return AudioClip(resample(clip.samples, clip.sample_rate, CAPTURE_RATE), CAPTURE_RATE).pcm()


def _duration_attr(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return (("duration", f"{float(value):g}"),)
    return ()


def tags_from_frame(frame: dict[str, Any]) -> tuple[Tag, ...]:
    """Faces and animations from ``avatar_control_request`` plus any other ``control_tags``, without repeats."""
    tags: list[Tag] = []
    control = frame.get("avatar_control_request")
    if isinstance(control, dict):
        face = control.get("face_name")
        if isinstance(face, str) and face:
            tags.append(Tag("face", face, _duration_attr(control.get("face_duration"))))
        animation = control.get("animation_name")
        if isinstance(animation, str) and animation:
            tags.append(Tag("animation", animation, _duration_attr(control.get("animation_duration"))))
    raw_tags = frame.get("control_tags")
    if isinstance(raw_tags, list):
        for item in raw_tags:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                continue
            attributes = item.get("attributes")
            attrs = {str(k): str(v) for k, v in attributes.items()} if isinstance(attributes, dict) else {}
            value = attrs.pop("name", "") or attrs.pop("value", "")
            tags.append(Tag(item["name"], value, tuple(sorted(attrs.items()))))
    unique: list[Tag] = []
    seen: set[tuple[str, str]] = set()
    for tag in tags:
        if (tag.name, tag.value) not in seen:
            seen.add((tag.name, tag.value))
            unique.append(tag)
    return tuple(unique)


def avatar_control_from_tags(tags: tuple[Tag, ...]) -> dict[str, Any] | None:
    """The ``avatar_control_request`` for our tags, or None when there is no face or animation."""
    control: dict[str, Any] = {}
    for tag in tags:
        duration = tag.attribute("duration")
        try:
            seconds = float(duration) if duration is not None else None
        except ValueError:
            seconds = None
        if tag.name == "face" and "face_name" not in control:
            control["face_name"], control["face_duration"] = tag.value, seconds if seconds is not None else 4.0
        elif tag.name == "animation" and "animation_name" not in control:
            control["animation_name"] = tag.value
            control["animation_duration"] = seconds if seconds is not None else 4.0
    return control or None


def control_tags(tags: tuple[Tag, ...]) -> list[dict[str, Any]]:
    return [{"name": t.name, "attributes": {"name": t.value, **dict(t.attributes)}} for t in tags]


def response_frame(
    kind: str,
    session_id: str | None = None,
    user_id: str | None = None,
    context_id: str | None = None,
    transaction_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """AIAvatarKit's response envelope (its ``AIAvatarResponse``): every field present, null where it sends null."""
    frame: dict[str, Any] = {
        "type": kind,
        "session_id": session_id,
        "user_id": user_id,
        "context_id": context_id,
        "transaction_id": transaction_id,
        "text": None,
        "voice_text": None,
        "language": None,
        "control_tags": None,
        "avatar_control_request": None,
        "audio_data": None,
        "metadata": {},
        "structured_content": None,
    }
    frame.update(fields)
    return frame
