"""One turn across the failover chain: who answers, and when the next brain is asked.

The first brain is asked. The next one is asked when it fails before any speech (the same utterance, with the
transcript if one came), or, when hedging is on, when it has shown no sign of life (no transcript, no speech)
``hedge_after`` seconds after the utterance was handed over: a hung server then costs that long, not the
first-audio timeout. Hedged brains run side by side; the first one to produce speech answers and the others
are cancelled, so the user hears exactly one reply. Only brains that do real work somewhere (the ones with a
health probe) are hedged to; the offline brain is never raced, or it would answer every slow turn.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

import trio

from appliance.errors import ProviderBadReply, ProviderError, ProviderTimeout
from appliance.turns import Brain, BrainOutput, ReplyChunk, Transcript, TurnRequest, Utterance

log = logging.getLogger(__name__)


class Member(Protocol):
    """What the race needs of a chain member (``failover._Member``)."""

    @property
    def name(self) -> str: ...

    @property
    def brain(self) -> Brain: ...

    @property
    def probe(self) -> Callable[[], Awaitable[None]] | None: ...


M = TypeVar("M", bound=Member)


@dataclass
class TurnState:
    transcript: str | None = None
    handed_speech: bool = False
    errors: list[ProviderError] = field(default_factory=list)
    winner: str | None = None  # the brain whose speech the user hears
    failed_mid_reply: ProviderError | None = None


@dataclass(frozen=True)
class Outcome(Generic[M]):
    """How the chain reports back to the failover brain's bookkeeping."""

    failed: Callable[[M, ProviderError], None]
    succeeded: Callable[[M], None]
    answered: Callable[[M, TurnState], None]


class TurnRace(Generic[M]):
    def __init__(
        self,
        candidates: Sequence[M],
        request: TurnRequest,
        out: trio.MemorySendChannel[BrainOutput],
        *,
        first_audio_timeout: float,
        hedge_after: float,
        outcome: Outcome[M],
    ) -> None:
        self.candidates = list(candidates)
        self.request = request
        self.out = out
        self.first_audio_timeout = first_audio_timeout
        self.hedge_after = hedge_after
        self.outcome = outcome
        self.state = TurnState()
        self.started = 0  # how many candidates have been asked
        self.asked_at = 0.0  # when the latest one was
        self.running = 0
        self.scopes: dict[str, trio.CancelScope] = {}
        self.progress = trio.Event()  # a transcript or speech arrived from some brain
        self.failovers = 0

    async def run(self) -> TurnState:
        async with trio.open_nursery() as nursery:
            self._ask_next(nursery)
            if self.hedge_after > 0:
                nursery.start_soon(self._hedge, nursery)
        return self.state

    # --- who is asked when ---------------------------------------------------------------------------------

    def _ask_next(self, nursery: trio.Nursery) -> bool:
        if self.started >= len(self.candidates):
            return False
        member = self.candidates[self.started]
        self.started += 1
        self.running += 1
        self.asked_at = trio.current_time()
        request = self.request
        if self.state.transcript and not request.utterance.text:  # no second speech recognition
            request = replace(request, utterance=_with_text(request.utterance, self.state.transcript))
        nursery.start_soon(self._run_member, nursery, member, request)
        return True

    async def _hedge(self, nursery: trio.Nursery) -> None:
        while self.started < len(self.candidates) and self.state.winner is None:
            asked_at = self.asked_at
            with trio.move_on_at(asked_at + self.hedge_after):  # counted from the latest brain asked
                await self.progress.wait()
            if self.progress.is_set() or self.state.winner is not None:
                return
            if self.asked_at != asked_at:  # one failed meanwhile and the next was asked: give it its time
                continue
            following = self.candidates[self.started]
            if following.probe is None:  # the offline brain: a last resort, never raced
                return
            log.info(
                "no word from %s after %g s; asking %s too",
                self.candidates[self.started - 1].name,
                self.hedge_after,
                following.name,
                extra={"turn_id": self.request.turn_id, "brain": following.name},
            )
            self._ask_next(nursery)

    async def _run_member(self, nursery: trio.Nursery, member: M, request: TurnRequest) -> None:
        try:
            error = await self._attempt(member, request)
        finally:
            self.running -= 1
        if error is None:
            if self.state.winner == member.name:
                self.outcome.succeeded(member)
                self.outcome.answered(member, self.state)
            return
        self.outcome.failed(member, error)
        if self.state.winner == member.name:  # the user heard part of it
            self.state.failed_mid_reply = error
            log.warning("%s failed mid-reply (%s)", member.name, error, extra=self._extra(member))
            return
        self.state.errors.append(error)
        if self.state.winner is not None:  # it lost the race to a brain that spoke
            log.info("%s: %s", member.name, error, extra=self._extra(member))
            return
        self.failovers += 1
        log.warning(
            "%s failed before speaking (%s); trying the next brain", member.name, error, extra=self._extra(member)
        )
        if self.running == 0:  # nobody else is still trying (a hedged brain may be)
            self._ask_next(nursery)

    # --- one brain -----------------------------------------------------------------------------------------

    async def _attempt(self, member: M, request: TurnRequest) -> ProviderError | None:
        """Run one brain; None when it answered (or lost the race), else why it failed."""
        send, receive = trio.open_memory_channel[BrainOutput](0)
        failure: list[ProviderError] = []
        held: list[ReplyChunk] = []
        alive = False
        with trio.CancelScope() as mine, receive:
            self.scopes[member.name] = mine
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reply, member, request, send, failure)
                with trio.move_on_after(self.first_audio_timeout) as guard:
                    async for item in receive:
                        alive = True
                        if await self._take(member, item, held):
                            guard.deadline = math.inf  # speech started: from here the brain's own timeouts rule
                if guard.cancelled_caught:
                    nursery.cancel_scope.cancel()
                    failure.append(ProviderTimeout(member.name, f"no speech within {self.first_audio_timeout:g} s"))
        if mine.cancelled_caught:  # another brain answered first
            # Beaten without a word (not even a transcript): as good as hung, and its circuit should say so.
            return None if alive else ProviderTimeout(member.name, f"no sign of life; {self.state.winner} answered")
        if failure:
            return failure[0]
        if self.state.winner is None and held:  # a reply without any speech (tags only)
            self._win(member)
            for chunk in held:
                await self.out.send(chunk)
        elif self.state.winner is None:
            self._win(member)
        return None

    async def _reply(
        self, member: M, request: TurnRequest, send: trio.MemorySendChannel[BrainOutput], failure: list[ProviderError]
    ) -> None:
        try:
            await member.brain.reply(request, send)
        except ProviderError as exc:
            failure.append(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # we stopped listening: it timed out or lost
        except Exception as exc:  # a bug in one brain must not silence the robot; it is logged in full
            log.exception("%s crashed", member.name, extra={"brain": member.name})
            failure.append(ProviderBadReply(member.name, f"{type(exc).__name__}: {exc}"))

    async def _take(self, member: M, item: BrainOutput, held: list[ReplyChunk]) -> bool:
        """Pass one item on (or hold it); True when it was this brain's first speech."""
        if isinstance(item, Transcript):
            self.progress.set()
            if self.state.transcript is None:
                self.state.transcript = item.text
                await self.out.send(item)
            return False
        chunk = replace(item, brain=item.brain or member.name)
        if self.state.winner == member.name:
            await self.out.send(chunk)
            return False
        held.append(chunk)
        if chunk.audio is None or self.state.winner is not None:
            return False
        self._win(member)
        for waiting in held:
            await self.out.send(waiting)
        held.clear()
        return True

    def _win(self, member: M) -> None:
        self.state.winner = member.name
        self.state.handed_speech = True
        self.progress.set()
        self.outcome.answered(member, self.state)
        for name, scope in self.scopes.items():
            if name != member.name:
                scope.cancel()

    def _extra(self, member: M) -> dict[str, str]:
        return {"turn_id": self.request.turn_id, "brain": member.name}


def _with_text(utterance: Utterance, text: str) -> Utterance:
    return Utterance(audio=utterance.audio, text=text, source=utterance.source, ended_at=utterance.ended_at)
