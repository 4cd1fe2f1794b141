"""Helpers to run a whole appliance in-process against the fake cloud and watch its events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from appliance.app import build_appliance
from appliance.assembly.parts import Appliance
from appliance.audio.base import AudioSink, AudioSource
from appliance.audio.playback import MemorySink
from appliance.audio.sources import SimulatedMicrophone
from appliance.config import AppConfig
from appliance.events import Event
from appliance.systemd import Notifier
from appliance.turns import Brain

E = TypeVar("E", bound=Event)


def cloud_config(url: str, **overrides: Any) -> AppConfig:
    """A configuration whose cloud is the fake at ``url`` (the OpenAI paths hang off /v1)."""
    data: dict[str, Any] = {
        "stt": {"base_url": f"{url}/v1", "api_key": "test-key"},
        "llm": {"base_url": f"{url}/v1", "api_key": "test-key", "model": "fake-model"},
        "tts": {"base_url": f"{url}/v1", "api_key": "test-key"},
        "conversation": {"brain": "cloud"},
        "audio": {"input": "simulated", "output": "simulated", "simulated_speech_after": None},
        "gpio": {"pin_factory": "mock"},
        "log": {"status_line": "off"},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    return AppConfig.model_validate(data)


class EventLog:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = trio.Event()

    def add(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, kind: type[E], predicate: Callable[[E], bool] = lambda e: True, timeout: float = 20) -> E:
        checked = 0
        with trio.fail_after(timeout):
            while True:
                for event in self.events[checked:]:
                    checked += 1
                    if isinstance(event, kind) and predicate(event):
                        return event
                await self._changed.wait()


@asynccontextmanager
async def running_appliance(
    config: AppConfig,
    *,
    source: AudioSource | None = None,
    sink: AudioSink | None = None,
    brain: Brain | None = None,
    notifier: Notifier | None = None,
) -> AsyncIterator[tuple[Appliance, EventLog]]:
    source = source or SimulatedMicrophone(None, None)
    sink = sink or MemorySink(realtime=False)
    app = build_appliance(
        config, source=source, sink=sink, brain=brain, notifier=notifier or Notifier({}), handle_signals=False
    )
    log = EventLog()
    async with trio.open_nursery() as nursery:

        async def record(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with app.bus.subscribe(name="test", size=10_000) as sub:
                task_status.started()
                async for event in sub:
                    log.add(event)

        await nursery.start(record)
        await nursery.start(app.run)
        yield app, log
        app.supervisor.stop("test done")
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serve_routes(routes: list[Any]) -> AsyncIterator[str]:
    """A Starlette app of ``routes`` on 127.0.0.1 (hypercorn on Trio); yields its base URL, stops on exit."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve
    from starlette.applications import Starlette

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, Starlette(routes=routes), config)  # type: ignore[arg-type]
        yield binds[0]
        nursery.cancel_scope.cancel()
