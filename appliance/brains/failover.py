"""``FailoverBrain``: an ordered list of brains (``conversation.brains = ["cloud", "remote", "offline"]``).

Each turn goes to the first brain whose circuit is closed. What happens when that brain fails depends on what
the user has heard:

* nothing yet (no chunk with speech has left this wrapper): the same utterance goes to the next brain at once.
  Chunks without speech are held back until the first speech, so a failed brain leaves no trace; a transcript
  is passed on (once) and the next brain gets its text, so speech recognition is not paid for twice;
* part of the reply: the turn stops cleanly with a short line (``failover.mid_reply_message``). The history
  then holds what was heard plus that line, so the next turn's context is true.

A brain that keeps failing (or times out, or refuses our key) has its circuit opened and is skipped. Brains
that can be probed cheaply (``async def probe()``: a WebSocket ping, a ``GET /models``) are probed in the
background while open (and every ``health_interval`` while healthy, so an outage is usually found before
the user speaks); the others are tried again by a real turn once their open time has passed. When the
preferred brain is healthy again, replies fail back to it. Every switch is published as ``BrainChanged``,
every circuit change as ``BrainHealthChanged``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from appliance.brains.health import CircuitBreaker, Condition
from appliance.brains.turn_race import Outcome, TurnRace, TurnState
from appliance.bus import EventBus
from appliance.conversation.local_voice import LocalVoice
from appliance.errors import ProviderError, ProviderTimeout, ProviderUnavailable
from appliance.events import BrainChanged, BrainHealthChanged, ConnectivityChanged
from appliance.settings.brains import FailoverConfig
from appliance.turns import Brain, BrainOutput, ReplyChunk, Tag, TurnRequest

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[None]]


@dataclass(eq=False)
class _Member:
    brain: Brain
    breaker: CircuitBreaker
    probe: Probe | None
    probing: bool = False
    checked_at: float = -math.inf  # when it last answered a turn or a probe

    @property
    def name(self) -> str:
        return self.brain.name


class FailoverBrain:
    def __init__(
        self,
        brains: Sequence[Brain],
        config: FailoverConfig,
        *,
        bus: EventBus | None = None,
        voice: LocalVoice | None = None,
        probes: Mapping[str, Probe] | None = None,
    ) -> None:
        if not brains:
            raise ValueError("FailoverBrain needs at least one brain")
        names = [b.name for b in brains]
        if len(set(names)) != len(names):
            raise ValueError(f"brain names must differ: {names}")
        self.config = config
        self.bus = bus
        self.voice = voice
        probes = dict(probes or {})
        self.members = [
            _Member(b, CircuitBreaker(config), probes.get(b.name) or getattr(b, "probe", None)) for b in brains
        ]
        self.active: str | None = None  # the brain that answered last
        self._running = False  # background probes are running (``run``)
        self.failovers = 0

    @property
    def name(self) -> str:
        """The brain the next turn will most likely use (what status displays show at turn start)."""
        try:
            now = trio.current_time()
        except RuntimeError:  # asked outside Trio (start-up logs): no circuit has opened yet
            return self.members[0].name
        for member in self.members:
            if member.breaker.healthy or ((member.probe is None or not self._running) and member.breaker.due(now)):
                return member.name
        return self.members[-1].name

    @property
    def healthy(self) -> bool | None:
        """The preferred brain answers without trouble; None until a probe or a turn has told (the status)."""
        condition = self.members[0].breaker.condition
        return None if condition is Condition.UNKNOWN else condition is Condition.HEALTHY

    @property
    def health(self) -> dict[str, str]:
        """Each brain's condition (unknown, healthy, degraded, unhealthy), and which brain answered last."""
        return {**{m.name: m.breaker.condition.value for m in self.members}, "active": self.active or "-"}

    # --- background: the members' own services and the health probes ------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._run(task_status)
        finally:
            self._running = False

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            for member in self.members:
                run = getattr(member.brain, "run", None)
                if run is not None:
                    await nursery.start(run)
            task_status.started()
            self._running = True
            for member in self.members:
                member.checked_at = trio.current_time()  # the routine checks come one interval after this one
                # A first look at once, so the status says "unknown" only briefly; not at a brain with a
                # connection of its own, which is still being made and would look down.
                if member.probe is not None and getattr(member.brain, "run", None) is None:
                    member.probing = True
                    nursery.start_soon(self._probe, member)
            interval = self.config.health_interval
            while True:
                now = trio.current_time()
                wake = now + 1.0
                for member in self.members:
                    if member.probe is None or member.probing:
                        continue
                    if member.breaker.healthy:
                        if not interval:
                            continue
                        ready_at = member.checked_at + interval  # routine check: find outages before a turn does
                    else:
                        ready_at = member.breaker.opened_at + member.breaker.open_for
                    if now >= ready_at:
                        member.probing = True
                        nursery.start_soon(self._probe, member)
                    else:
                        wake = min(wake, ready_at)
                await trio.sleep_until(wake)

    async def _probe(self, member: _Member) -> None:
        assert member.probe is not None
        try:
            with trio.fail_after(self.config.probe_timeout):
                await member.probe()
        except trio.TooSlowError:
            self._failed(member, ProviderTimeout(member.name, f"probe not answered in {self.config.probe_timeout:g} s"))
        except ProviderError as exc:
            self._failed(member, exc)
        else:
            self._succeeded(member, "probe")
        finally:
            member.probing = False
            member.checked_at = trio.current_time()

    # --- turns --------------------------------------------------------------------------------------------

    def _candidates(self) -> list[_Member]:
        now = trio.current_time()
        ready = []
        for member in self.members:
            if member.breaker.healthy:
                ready.append(member)
            elif (member.probe is None or not self._running) and member.breaker.usable(now):
                ready.append(member)  # half-open: this turn is its trial (nobody probes it in the background)
        return ready or list(self.members)  # all open: still try rather than say nothing

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            race = TurnRace(
                self._candidates(),
                request,
                out,
                first_audio_timeout=self.config.first_audio_timeout,
                hedge_after=self.config.hedge_after,
                outcome=Outcome(self._failed, self._answered_turn, self._answered_by),
            )
            state = await race.run()
            self.failovers += race.failovers
            if state.failed_mid_reply is not None:
                await self._apologise(out)
                return
            if state.winner is None:
                raise state.errors[-1] if state.errors else ProviderUnavailable("failover", "no brain could answer")

    def _answered_turn(self, member: _Member) -> None:
        member.checked_at = trio.current_time()
        self._succeeded(member, "turn")

    async def warm(self) -> None:
        """Open connections while the user is still speaking, for every brain this turn may try."""
        async with trio.open_nursery() as nursery:
            for member in self._candidates():
                warm = getattr(member.brain, "warm", None)
                if warm is not None:
                    nursery.start_soon(self._warm_one, member.name, warm)

    async def _warm_one(self, name: str, warm: Callable[[], Awaitable[None]]) -> None:
        try:
            await warm()
        except Exception:  # warming is an optimisation: the turn itself finds out what is wrong
            log.debug("warming %s failed", name, exc_info=True, extra={"brain": name})

    async def _apologise(self, out: trio.MemorySendChannel[BrainOutput]) -> None:
        text = self.config.mid_reply_message
        if not text:
            return
        audio = await self.voice.say(text) if self.voice is not None else None
        await out.send(ReplyChunk(text, text, (Tag("face", "sorrow"),), audio))

    # --- bookkeeping --------------------------------------------------------------------------------------

    def _publish(self, event: BrainChanged | BrainHealthChanged | ConnectivityChanged) -> None:
        if self.bus is not None:
            self.bus.publish(event)

    def _answered_by(self, member: _Member, state: TurnState) -> None:
        if self.active == member.name:
            return
        previous, self.active = self.active, member.name
        preferred = self.members[0].name
        if previous is None:
            reason = "first reply"
        elif member.name == preferred:
            reason = "back on the preferred brain"
        else:
            reason = "; ".join(str(e) for e in state.errors) or f"{previous} is unhealthy"
        log.info("replies now come from %s (%s)", member.name, reason, extra={"brain": member.name})
        self._publish(BrainChanged(member.name, previous, reason))
        # What the LEDs show while idle: the configured brain, a backup, or the one that only says it is offline.
        status = "online" if member.name == preferred else "offline" if member.name == "offline" else "fallback"
        self._publish(ConnectivityChanged(status, member.name))

    def _failed(self, member: _Member, error: ProviderError) -> None:
        was_healthy = member.breaker.healthy
        member.breaker.failure(error)
        if was_healthy and not member.breaker.healthy:
            log.warning(
                "%s circuit open for %.1f s: %s",
                member.name,
                member.breaker.open_for,
                error,
                extra={"brain": member.name},
            )
            self._publish(BrainHealthChanged(member.name, False, member.breaker.state.value, str(error)))
        elif not was_healthy:
            log.info(
                "%s still failing (%s); next try in %.1f s",
                member.name,
                error,
                member.breaker.open_for,
                extra={"brain": member.name},
            )

    def _succeeded(self, member: _Member, how: str) -> None:
        if member.breaker.success():
            log.info("%s healthy again (%s)", member.name, how, extra={"brain": member.name})
            self._publish(BrainHealthChanged(member.name, True, member.breaker.state.value))

    async def aclose(self) -> None:
        for member in self.members:
            try:
                await member.brain.aclose()
            except Exception:  # closing one brain must not keep the others open
                log.debug("closing %s failed", member.name, exc_info=True)
