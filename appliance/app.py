"""Builds the appliance from its configuration: picks implementations, wires channels, registers services.

Tests and benchmarks pass their own source, sink or brain; everything else comes from the config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from appliance.assembly.brains import (
    BrainBuilders,
    BrainService,
    DeferredBrain,
    PrewarmService,
    brain_plan,
    build_brain,
    build_response_hooks,
    build_tracing,
    wrap_for_text_wake,
)
from appliance.assembly.devices import build_echo_canceller, make_sink, make_source
from appliance.assembly.parts import Appliance
from appliance.audio.base import AudioSink, AudioSource, BlockQueue
from appliance.audio.capture import CaptureService
from appliance.bus import EventBus
from appliance.config import AppConfig
from appliance.conversation.history import ConversationHistory
from appliance.conversation.local_voice import LocalVoice
from appliance.conversation.service import ConversationService
from appliance.hardware.body import build_body
from appliance.listening.service import ListeningService
from appliance.logs import StatusAwareHandler
from appliance.state import StateService
from appliance.status_line import StatusLine
from appliance.supervisor import Supervisor
from appliance.systemd import Notifier
from appliance.turns import Brain, Utterance

log = logging.getLogger(__name__)


def integration_brains(bus: EventBus) -> BrainBuilders:
    """The brains that come from an integration, for ``build_brain`` (here, at the top, which may import them)."""

    def home_assistant(config: AppConfig) -> Brain:
        from appliance.integrations.esphome.brain import HomeAssistantBrain
        from appliance.integrations.esphome.satellite import satellite_for

        return HomeAssistantBrain(satellite_for(bus, config.home_assistant))

    return {"home_assistant": home_assistant}


@dataclass
class _Brains:
    """The brain and what runs beside it: prewarming, background work, tools, MCP, jobs, tracing."""

    brain: Brain
    prewarm: DeferredBrain | None = None
    background: Any = None
    tools: Any = None
    mcp: Any = None
    jobs: Any = None
    tracing: Any = None


def _brains(config: AppConfig, bus: EventBus, voice: LocalVoice, brain: Brain | None) -> _Brains:
    if brain is not None:  # given (tests, ``appliance say``): nothing to build around it
        return _Brains(brain)
    tools = mcp = jobs = None
    if "cloud" in brain_plan(config):
        from appliance.agent.factory import build_mcp
        from appliance.agent.tools import ToolRegistry

        tools = ToolRegistry()
        mcp = build_mcp(config.llm, tools)
        if config.llm.on_finish:
            from appliance.agent.background import BackgroundJobs

            jobs = BackgroundJobs()
    tracing = build_tracing(config)
    built, prewarm, background = build_brain(config, voice, bus, tools, jobs, tracing, integration_brains(bus))
    return _Brains(wrap_for_text_wake(config, built), prewarm, background, tools, mcp, jobs, tracing)


def build_appliance(
    config: AppConfig,
    *,
    source: AudioSource | None = None,
    sink: AudioSink | None = None,
    brain: Brain | None = None,
    notifier: Notifier | None = None,
    status_handler: StatusAwareHandler | None = None,
    pin_factory: Any = None,
    handle_signals: bool = True,
    control: bool = False,
    config_path: Path | None = None,
) -> Appliance:
    bus = EventBus()
    supervisor = Supervisor(bus, config.supervisor, notifier, handle_signals=handle_signals)
    voice = LocalVoice()
    brains = _brains(config, bus, voice, brain)
    log.info("brain: %s", " → ".join(brain_plan(config)) if brains.background is not None else brains.brain.name)
    source = source or make_source(config)
    sink = sink or make_sink(config)
    queue = BlockQueue()
    if config.home_assistant.esphome:  # the satellite streams microphone blocks to Home Assistant from here
        from appliance.integrations.esphome.satellite import TappedBlockQueue

        queue = TappedBlockQueue()
    appliance = _assemble(config, bus, supervisor, voice, brains, source, sink, queue, pin_factory)
    if status_handler is not None:
        supervisor.add(StatusLine(bus, status_handler), required=False)
    _supervise(appliance, brains)
    _add_transports(appliance, queue, control, config_path)
    return appliance


def _assemble(
    config: AppConfig,
    bus: EventBus,
    supervisor: Supervisor,
    voice: LocalVoice,
    brains: _Brains,
    source: AudioSource,
    sink: AudioSink,
    queue: BlockQueue,
    pin_factory: Any,
) -> Appliance:
    """The core services, registered in the order they start: state, capture, listening, conversation."""
    utterance_send, utterance_receive = trio.open_memory_channel[Utterance](4)
    conv_cfg = config.conversation
    history = ConversationHistory(conv_cfg.history_limit, conv_cfg.idle_timeout)
    state = StateService(bus, conv_cfg.error_display)
    echo = build_echo_canceller(config, source, sink)
    listening = ListeningService(
        bus, queue, utterance_send, config.listening, config.audio.block_ms, echo_cancelled=echo is not None
    )
    conversation = ConversationService(
        bus,
        brains.brain,
        sink,
        utterance_receive,
        history,
        voice,
        conv_cfg.error_message,
        mid_reply_message=config.failover.mid_reply_message,
    )
    body = build_body(bus, config.hardware, pin_factory, brain_name=brains.brain.name)
    supervisor.add(state)
    capture = CaptureService(source, queue, bus)
    capture.echo = echo
    if echo is not None:
        listening.guard.canceller = echo
    supervisor.add(capture)
    supervisor.add(listening)
    supervisor.add(conversation)
    appliance = Appliance(
        config, bus, supervisor, state, conversation, listening, brains.brain, source, sink, body, body.faces
    )
    appliance.tools, appliance.tracing, appliance.echo = brains.tools, brains.tracing, echo
    appliance.capture_queue = queue
    appliance.brain_builders = integration_brains(bus)
    appliance.response_hooks = build_response_hooks(bus, config)
    return appliance


def _supervise(appliance: Appliance, brains: _Brains) -> None:
    """The optional services, after the core ones (and after the status line, so it sees the first face)."""
    supervisor = appliance.supervisor
    for part in appliance.body.services:
        supervisor.add(part, required=False)
    if brains.prewarm is not None:
        supervisor.add(PrewarmService(brains.prewarm), required=False)
    if brains.background is not None:
        supervisor.add(BrainService(brains.background), required=False)
    for extra in (brains.mcp, brains.jobs):
        if extra is not None:
            supervisor.add(extra, required=False)
    supervisor.add(appliance.response_hooks, required=False)


def _add_transports(appliance: Appliance, queue: BlockQueue, control: bool, config_path: Path | None) -> None:
    from appliance.commands import Commands

    config = appliance.config
    appliance.commands = Commands(appliance)
    if config.home_assistant.esphome:
        from appliance.integrations.esphome.service import add_esphome

        add_esphome(appliance, queue)
    if config.mqtt.enabled:
        from appliance.integrations.mqtt.service import add_mqtt

        add_mqtt(appliance)
    if control:  # last: it wraps the services registered above so a config change can restart one of them
        from appliance.control.service import add_control

        add_control(appliance, config_path)
