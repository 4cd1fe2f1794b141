"""What the routes work on: the running appliance, seen through its bus, supervisor and services.

Routes read state here and act by publishing events (mute, face, listen, ...) or calling the conversation
service; nothing here reaches into another subsystem's internals beyond its public attributes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from appliance.bus import EventBus
from appliance.commands import Commands
from appliance.config import AppConfig
from appliance.control.histories import HistoryStore
from appliance.control.metrics import Metrics
from appliance.control.sse import Slots
from appliance.events import State, StateChanged, TurnFinished
from appliance.settings.control import ControlConfig
from appliance.speaker import Speaker

if TYPE_CHECKING:
    from appliance.assembly.parts import Appliance

log = logging.getLogger(__name__)

_BRAIN_FIELDS = {"brain", "brains", "system_prompt", "system_prompt_params", "offline_message"}
_INPUT_FIELDS = {"input", "input_device", "input_file", "simulated_speech_after", "simulated_repeat"}
_OUTPUT_FIELDS = {"output", "output_device", "output_file"}
_SAME = object()  # restart a subsystem with the settings it has


@dataclass
class ApplyResult:
    applied: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)


class ControlContext:
    def __init__(
        self,
        appliance: Appliance,
        store: HistoryStore,
        metrics: Metrics,
        speaker: Speaker,
        token: str | None,
        config_path: Path | None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.appliance = appliance
        self.bus: EventBus = appliance.bus
        self.store = store
        self.metrics = metrics
        self.speaker = speaker
        self.token = token
        self.config_path = config_path
        self.environ = os.environ if environ is None else environ
        # The [control] settings in force: taken when the API starts, so a PATCH of them (reported as
        # "restart required") does not half-apply to a running server.
        self.limits: ControlConfig = appliance.config.control
        self.slots = Slots(self.limits.max_sse_clients)
        self.config_lock = trio.Lock()
        # The command layer the other transports (MQTT) use too, with this API's say queue.
        self.commands: Commands = getattr(appliance, "commands", None) or Commands(appliance)
        self.commands.speaker = speaker

    # --- reading ---------------------------------------------------------------------------------------

    @property
    def config(self) -> AppConfig:
        return self.appliance.config

    def uptime(self) -> float:
        return self.commands.uptime()

    def state(self) -> State:
        return self.commands.state()

    def muted(self) -> bool:
        return self.commands.muted()

    def face(self) -> str:
        return self.commands.face()

    def capture_overruns(self) -> int:
        """Microphone blocks dropped because listening fell behind."""
        queue = self.appliance.capture_queue
        return int(getattr(queue, "dropped", 0))

    def last_turn(self) -> TurnFinished | None:
        return self.bus.latest(TurnFinished)

    def last_state_change(self) -> StateChanged | None:
        return self.bus.latest(StateChanged)

    def service_running(self, name: str) -> bool:
        record = self.appliance.supervisor.records.get(name)
        return record is not None and record.status == "running"

    # --- changing the configuration ------------------------------------------------------------------------

    async def apply(self, old: AppConfig, new: AppConfig, changes: dict[str, set[str]]) -> ApplyResult:
        """Bring the running appliance in line with ``new``, restarting only what the change touches."""
        result = ApplyResult()
        app = self.appliance
        app.config = new
        restart: dict[str, Any] = {}  # subsystem -> its new settings (_SAME: restart with what it has)
        rebuild_brain = False
        for section, fields in changes.items():
            if section == "log":
                logging.getLogger().setLevel(new.log.level)
                result.applied.append("log")
            elif section == "supervisor":
                app.supervisor.config = new.supervisor
                result.applied.append("supervisor")
            elif section == "listening":
                restart["listening"] = new.listening
            elif section in ("hardware", "gpio"):
                # The body's parts are built from the whole section (presets, shared pin checks): a
                # change applies at the next start rather than being half-applied now.
                result.restart_required.append("hardware")
            elif section == "audio":
                self._apply_audio(new, fields, result, restart)
            elif section == "conversation":
                conv = new.conversation
                app.conversation.update_settings(conv)
                app.state.error_display = conv.error_display
                result.applied.append("conversation")
                rebuild_brain |= bool(fields & _BRAIN_FIELDS)
            elif section in ("stt", "llm", "tts", "openai", "remote", "failover"):
                app.conversation.mid_reply_message = new.failover.mid_reply_message
                rebuild_brain = True
            elif app.supervisor.takes_settings(section):
                restart[section] = getattr(new, section)
            else:
                result.restart_required.append(section)
        if rebuild_brain:
            await self._rebuild_brain(new)
            result.restarted.append("brain")
        for name, settings in restart.items():
            if name not in app.supervisor.records:
                result.restart_required.append(name)
                continue
            if settings is _SAME:
                await app.supervisor.restart(name)
            else:
                await app.supervisor.reconfigure(name, settings)
            result.restarted.append(name)
        return result

    def _apply_audio(self, new: AppConfig, fields: set[str], result: ApplyResult, restart: dict[str, Any]) -> None:
        from appliance.assembly.devices import make_sink, make_source

        app = self.appliance
        if "volume" in fields and hasattr(app.sink, "volume"):
            app.sink.volume = new.audio.volume
            result.applied.append("audio.volume")
        if fields & _INPUT_FIELDS and "capture" in app.supervisor.records:
            source = make_source(new)
            app.source = source
            restart["capture"] = source
        if fields & _OUTPUT_FIELDS:
            sink = make_sink(new)
            app.sink = sink
            app.conversation.use_sink(sink)
            restart["conversation"] = _SAME
        if "block_ms" in fields:
            result.restart_required.append("audio.block_ms")

    async def _rebuild_brain(self, new: AppConfig) -> None:
        from appliance.assembly.brains import build_brain, wrap_for_text_wake
        from appliance.conversation.local_voice import LocalVoice

        app = self.appliance
        old = app.brain
        voice = app.conversation.error_voice or LocalVoice()
        # The same tool registry: tools added at runtime and MCP tools survive the rebuild.
        brain, _prewarm, background = build_brain(
            new, voice, app.bus, app.tools, tracing=app.tracing, builders=app.brain_builders
        )
        brain = wrap_for_text_wake(new, brain)
        app.brain = brain
        app.conversation.use_brain(brain)
        if "brains" in app.supervisor.records:  # remote sessions and health probes of the old brain list
            await app.supervisor.reconfigure("brains", background)
        elif background is not None:
            log.info("the new brain list runs without background probes until the next start")
        log.info("brain rebuilt for new configuration: %s", brain.name)
        with trio.move_on_after(new.supervisor.stop_timeout):
            try:
                await old.aclose()
            except Exception:
                log.debug("closing the old brain failed", exc_info=True)
