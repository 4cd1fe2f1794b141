"""The ``LLMService`` protocol and the few shapes a tool-using, image-seeing turn needs.

``stream`` yields text deltas (``str``) as the model writes, and a :class:`ToolCall` for each complete call
the model asks for. A provider that cannot call tools simply never yields one. After the stream ends with
tool calls, the brain runs them and streams again with the finished :class:`ToolRound` s appended, so each
provider renders calls and results in its own wire format and the brain stays provider-neutral.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# Image belongs to the turn (it may come with the request); providers import it from here as before.
from appliance.turns import Image as Image
from appliance.turns import Message


@dataclass(frozen=True)
class ToolSpec:
    """What the model is told about a tool: a name, what it does, and a JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    """What a tool answered. ``images`` (e.g. a camera still) reach the model attached to the request."""

    call: ToolCall
    content: str
    is_error: bool = False
    images: tuple[Image, ...] = ()


@dataclass(frozen=True)
class ToolRound:
    """One round trip: the text the model wrote before calling, its calls, and their results."""

    text: str
    results: tuple[ToolResult, ...]


LLMEvent = str | ToolCall


@runtime_checkable
class LLMService(Protocol):
    """A language model that streams its reply.

    ``stream`` is an async generator; callers wrap it in ``contextlib.aclosing`` so an interrupted turn
    closes the HTTP stream at once. Raise :class:`appliance.errors.ProviderError` on failure, including a
    stream that ends before the model said it was finished. The keyword arguments are optional extras a
    provider may ignore when it cannot use them (``conversation_id`` is for providers that keep the history
    server-side, such as Dify).
    """

    name: str

    def stream(
        self,
        system: str,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        rounds: Sequence[ToolRound] = (),
        images: Sequence[Image] = (),
        conversation_id: str = "",
    ) -> AsyncIterator[LLMEvent]: ...

    async def aclose(self) -> None: ...
