"""What was said in the current conversation, forgotten after a stretch of silence."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import trio

from appliance.turns import Message


class ConversationHistory:
    def __init__(self, limit: int = 20, idle_timeout: float = 60.0, clock: Callable[[], float] | None = None) -> None:
        self.limit = limit
        self.idle_timeout = idle_timeout
        self._clock = clock or trio.current_time
        self._messages: list[Message] = []
        self._last: float | None = None
        self.conversation_id = uuid.uuid4().hex[:12]

    def _expire(self) -> None:
        if self._last is not None and self._clock() - self._last > self.idle_timeout:
            self.reset()

    def reset(self) -> None:
        self._messages.clear()
        self._last = None
        self.conversation_id = uuid.uuid4().hex[:12]

    def messages(self) -> tuple[Message, ...]:
        """The history as a model takes it: starting with the user (an announcement may come first)."""
        self._expire()
        start = 0
        while start < len(self._messages) and self._messages[start].role != "user":
            start += 1
        return tuple(self._messages[start:])

    def add_turn(self, user: str | None, assistant: str) -> None:
        """Record a finished (or interrupted) turn: only what the user heard goes in as the reply."""
        self._expire()
        if user:
            self._messages.append(Message("user", user))
        if assistant:
            if not user and self._messages and self._messages[-1].role == "assistant":
                # The robot spoke twice in a row (an announcement): one reply, as models expect turns to alternate.
                previous = self._messages.pop()
                assistant = f"{previous.content} {assistant}"
            self._messages.append(Message("assistant", assistant))
        if self.limit and len(self._messages) > self.limit:
            del self._messages[: len(self._messages) - self.limit]
            # A history must not open with a reply to a question that was cut away.
            while self._messages and self._messages[0].role != "user":
                del self._messages[0]
        elif not self.limit:
            self._messages.clear()
        self._last = self._clock()
