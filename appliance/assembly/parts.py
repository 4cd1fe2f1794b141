"""The running robot's parts, as the transports (control API, MQTT, ESPHome) see them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from appliance.audio.base import AudioSink, AudioSource
from appliance.bus import EventBus
from appliance.config import AppConfig
from appliance.conversation.service import ConversationService
from appliance.hardware.body import Body
from appliance.hardware.faces import FaceService
from appliance.listening.service import ListeningService
from appliance.state import StateService
from appliance.supervisor import Supervisor
from appliance.turns import Brain


@dataclass
class Appliance:
    config: AppConfig
    bus: EventBus
    supervisor: Supervisor
    state: StateService
    conversation: ConversationService
    listening: ListeningService
    brain: Brain
    source: AudioSource
    sink: AudioSink
    body: Body
    faces: FaceService
    control: Any = None  # the control API service, when enabled
    tools: Any = None  # the cloud brain's ToolRegistry: add tools at runtime with ``app.tools.add(...)``
    response_hooks: Any = None  # ``app.response_hooks.add("start", show_thinking)``
    tracing: Any = None  # the OpenTelemetry exporter, when [tracing] is on
    commands: Any = None  # the command layer every transport (control API, MQTT) calls
    echo: Any = None  # the echo canceller (appliance.audio.echo), when listening.echo_cancel runs one
    capture_queue: Any = None  # the microphone's block queue (its ``dropped`` count is the overrun figure)
    brain_builders: Any = None  # brains an integration provides, by kind (a rebuilt brain list needs them too)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.supervisor.run(task_status=task_status)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self.config.supervisor.stop_timeout):
                await self.brain.aclose()
                if self.tracing is not None:  # the last turns' spans, as far as the stop allows
                    await trio.to_thread.run_sync(self.tracing.shutdown, abandon_on_cancel=True)
