from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from appliance.brains.base import Message


@runtime_checkable
class LLMService(Protocol):
    """A language model that streams its reply as text deltas.

    ``stream`` is an async generator; callers wrap it in ``contextlib.aclosing`` so an interrupted turn
    closes the HTTP stream at once. Raise :class:`appliance.errors.ProviderError` on failure, including a
    stream that ends before the model said it was finished.
    """

    name: str

    def stream(self, system: str, messages: Sequence[Message]) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...
