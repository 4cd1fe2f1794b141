"""An in-process broadcast hub on Trio memory channels.

``publish`` never blocks: the publisher may be the audio path. Each subscriber has its own bounded buffer;
when it is full, display-only events are dropped and counted. A full buffer for a kept event means the
subscriber is stuck, which is logged loudly and counted too: blocking every publisher behind one stuck
reader would be worse.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import trio

from appliance.events import Event

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


class Subscription:
    def __init__(self, bus: EventBus, name: str, types: tuple[type[Event], ...], size: int) -> None:
        self.name = name
        self.types = types
        self.dropped = 0
        self._bus = bus
        self._send, self.receive = trio.open_memory_channel[Event](size)

    def _offer(self, event: Event) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            if not event.droppable:
                log.error("subscriber %s is not keeping up; dropped %s", self.name, type(event).__name__)
        except trio.BrokenResourceError:
            self._bus._unsubscribe(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._send.close()
        self.receive.close()


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self.published = 0
        self.last: dict[type[Event], Event] = {}

    def publish(self, event: Event) -> None:
        self.published += 1
        self.last[type(event)] = event
        for sub in tuple(self._subscriptions):
            if not sub.types or isinstance(event, sub.types):
                sub._offer(event)

    @contextmanager
    def subscribe(self, *types: type[Event], name: str = "?", size: int = 256) -> Iterator[Subscription]:
        """Receive every event of the given types (all events if none) published while the block runs."""
        sub = Subscription(self, name, types, size)
        self._subscriptions.append(sub)
        try:
            yield sub
        finally:
            self._unsubscribe(sub)
            sub.close()

    def handled(self, event_type: type[Event]) -> bool:
        """Whether a subscriber asked for this type by name (catch-all listeners such as loggers do not count)."""
        return any(event_type in sub.types for sub in self._subscriptions)

    def latest(self, event_type: type[E]) -> E | None:
        event = self.last.get(event_type)
        return event  # type: ignore[return-value]

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    @property
    def dropped(self) -> int:
        return sum(sub.dropped for sub in self._subscriptions)
