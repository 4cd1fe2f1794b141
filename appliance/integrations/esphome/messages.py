"""The protobuf messages and their wire ids, straight from aioesphomeapi (the client Home Assistant uses).

We pin aioesphomeapi, so the message set is exactly the one that release of Home Assistant speaks.
"""

from __future__ import annotations

from typing import Any

from aioesphomeapi import api_pb2 as pb
from aioesphomeapi.core import MESSAGE_TYPE_TO_PROTO
from google.protobuf.message import Message

__all__ = ["API_VERSION", "CLASS_TO_TYPE", "TYPE_TO_CLASS", "event_data", "pb", "type_of"]

TYPE_TO_CLASS: dict[int, Any] = dict(MESSAGE_TYPE_TO_PROTO)
CLASS_TO_TYPE: dict[Any, int] = {cls: msg_type for msg_type, cls in TYPE_TO_CLASS.items()}

API_VERSION = (1, 10)  # what Home Assistant's own linux-voice-assistant answers; enough for every feature we offer


def type_of(message: Message) -> int:
    return CLASS_TO_TYPE[type(message)]


def event_data(message: Any) -> dict[str, str]:
    return {item.name: item.value for item in message.data}
