"""Behaviour hooks: user code told of each stage of a reply (start, every chunk, final, error).

A hook shows "thinking" on a start, moves a servo with each sentence, or logs a failure to a dashboard. It
must never slow the reply or end it: hooks learn of stages from the event bus, each hook works through its
own bounded queue in order (a hook that falls behind loses stages, with a warning, instead of holding
anything up), a plain function runs in a worker thread, every call has a time limit, and a failing hook is
logged and called again for the next stage.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import trio

from appliance.bus import EventBus
from appliance.events import Event, Heard, SentenceStarted, TurnFinished, TurnStarted
from appliance.settings.agent import ResponseHooksConfig

log = logging.getLogger(__name__)

Stage = Literal["start", "chunk", "final", "error"]
STAGES: tuple[str, ...] = get_args(Stage)
_REMEMBERED_TURNS = 64


@dataclass(frozen=True)
class ResponseStage:
    """What a hook is given. ``text``: the sentence (chunk), all that was said (final), the error (error)."""

    type: Stage
    turn_id: str
    brain: str = ""
    text: str = ""
    is_first_chunk: bool = False
    user_text: str = ""
    outcome: str = ""  # final and error: done | interrupted | empty | failed


@dataclass(eq=False)
class _Hook:
    stage: str
    func: Callable[..., Any]
    name: str
    pending: int
    send: trio.MemorySendChannel[ResponseStage] = field(init=False)
    receive: trio.MemoryReceiveChannel[ResponseStage] = field(init=False)
    lost: int = 0

    def __post_init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[ResponseStage](self.pending)


@dataclass
class _Turn:
    brain: str = ""
    user_text: str = ""
    chunks: int = 0


class ResponseHooks:
    name = "response_hooks"

    def __init__(self, bus: EventBus, timeout: float = 5.0, max_pending: int = 32) -> None:
        self.bus = bus
        self.timeout = timeout
        self.max_pending = max_pending
        self._hooks: list[_Hook] = []
        self._turns: dict[str, _Turn] = {}
        self._nursery: trio.Nursery | None = None

    @classmethod
    def from_config(cls, bus: EventBus, cfg: ResponseHooksConfig) -> ResponseHooks:
        """Raises :class:`appliance.hooks.HookError` naming the setting of a path that won't load."""
        from appliance.hooks import load_hook

        hooks = cls(bus, cfg.timeout, cfg.max_pending)
        for stage in STAGES:
            for index, path in enumerate(getattr(cfg, f"on_{stage}")):
                hooks.add(stage, load_hook(path, f"response_hooks.on_{stage}[{index}]"), name=path)
        return hooks

    def add(self, stage: str, func: Callable[..., Any], name: str | None = None) -> None:
        """Call ``func(ResponseStage)`` at every ``stage`` ("start", "chunk", "final", "error") from now on."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
        if not callable(func):
            raise TypeError(f"a {stage} hook must be callable, not {type(func).__name__}")
        hook = _Hook(stage, func, name or str(getattr(func, "__qualname__", repr(func))), self.max_pending)
        self._hooks.append(hook)
        if self._nursery is not None:
            self._nursery.start_soon(self._work, hook)

    def remove(self, func: Callable[..., Any]) -> None:
        for hook in [h for h in self._hooks if h.func is func]:
            self._hooks.remove(hook)
            hook.send.close()  # its worker ends once the stages already queued are done

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.bus.subscribe(TurnStarted, Heard, SentenceStarted, TurnFinished, name=self.name) as events:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    for hook in self._hooks:
                        nursery.start_soon(self._work, hook)
                    task_status.started()
                    async for event in events:
                        for stage in self.stages(event):
                            self._offer(stage)
                finally:
                    self._nursery = None

    def stages(self, event: Event) -> Iterator[ResponseStage]:
        """The stages an event marks (none for a transcript, which only fills in ``user_text``)."""
        if isinstance(event, TurnStarted):
            self._turns[event.turn_id] = _Turn(event.brain)
            while len(self._turns) > _REMEMBERED_TURNS:  # a turn whose end we never saw
                del self._turns[next(iter(self._turns))]
            yield ResponseStage("start", event.turn_id, event.brain)
            return
        turn = self._turns.get(getattr(event, "turn_id", ""), _Turn())
        if isinstance(event, Heard):
            turn.user_text = event.text
        elif isinstance(event, SentenceStarted):
            turn.chunks += 1
            yield ResponseStage("chunk", event.turn_id, turn.brain, event.text, turn.chunks == 1, turn.user_text)
        elif isinstance(event, TurnFinished):
            self._turns.pop(event.turn_id, None)
            if event.outcome == "failed":
                yield ResponseStage(
                    "error", event.turn_id, turn.brain, event.error or "", False, turn.user_text, "failed"
                )
            else:
                yield ResponseStage(
                    "final", event.turn_id, turn.brain, event.spoken, False, turn.user_text, event.outcome
                )

    def _offer(self, stage: ResponseStage) -> None:
        for hook in self._hooks:
            if hook.stage != stage.type:
                continue
            try:
                hook.send.send_nowait(stage)
            except trio.WouldBlock:
                hook.lost += 1
                log.warning(
                    "response hook %s is falling behind: %s stage of turn %s skipped (%d so far)",
                    hook.name,
                    stage.type,
                    stage.turn_id,
                    hook.lost,
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # removed meanwhile

    async def _work(self, hook: _Hook) -> None:
        async for stage in hook.receive:
            with trio.move_on_after(self.timeout) as limit:
                try:
                    if inspect.iscoroutinefunction(hook.func):
                        await hook.func(stage)
                    else:  # a plain function may block (GPIO, a servo, a request): off the event loop
                        await trio.to_thread.run_sync(hook.func, stage, abandon_on_cancel=True)
                except Exception:
                    log.warning(
                        "response hook %s failed on %s",
                        hook.name,
                        stage.type,
                        exc_info=True,
                        extra={"turn_id": stage.turn_id},
                    )
            if limit.cancelled_caught:
                log.warning(
                    "response hook %s took over %g s on %s; moved on",
                    hook.name,
                    self.timeout,
                    stage.type,
                    extra={"turn_id": stage.turn_id},
                )
