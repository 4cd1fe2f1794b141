"""Builds the appliance from its configuration: picks implementations, wires channels, registers services.

Tests and benchmarks pass their own source, sink or brain; everything else comes from the config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from pydantic import SecretStr

from appliance.audio.base import AudioSink, AudioSource, BlockQueue
from appliance.audio.capture import CaptureService
from appliance.bus import EventBus
from appliance.config import AppConfig
from appliance.conversation.history import ConversationHistory
from appliance.conversation.local_voice import LocalVoice
from appliance.conversation.service import ConversationService
from appliance.hardware.body import Body, build_body
from appliance.hardware.faces import FaceService
from appliance.listening.service import ListeningService
from appliance.logs import StatusAwareHandler
from appliance.settings_base import ConfigError
from appliance.state import StateService
from appliance.status_line import StatusLine
from appliance.supervisor import Supervisor
from appliance.systemd import Notifier
from appliance.turns import Brain, BrainOutput, TurnRequest, Utterance

log = logging.getLogger(__name__)


class DeferredBrain:
    """Builds the real brain off the event loop, so heavy SDK imports never delay READY or audio."""

    def __init__(self, name: str, factory: Callable[[], Brain]) -> None:
        self.name = name
        self._factory = factory
        self._brain: Brain | None = None
        self._lock = trio.Lock()

    async def ensure(self) -> Brain:
        async with self._lock:
            if self._brain is None:
                self._brain = await trio.to_thread.run_sync(self._factory)
        return self._brain

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        brain = await self.ensure()
        await brain.reply(request, out)

    async def warm(self) -> None:
        brain = await self.ensure()
        warm = getattr(brain, "warm", None)
        if warm is not None:
            await warm()

    async def aclose(self) -> None:
        if self._brain is not None:
            await self._brain.aclose()


class PrewarmService:
    """Loads the cloud SDKs in a worker thread right after start, before the first turn needs them."""

    name = "prewarm"

    def __init__(self, brain: DeferredBrain) -> None:
        self.brain = brain

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.brain.warm()
        log.debug("cloud brain ready")
        await trio.sleep_forever()


def choose_brain_kind(config: AppConfig) -> str:
    kind = config.conversation.brain
    if kind != "auto":
        return kind
    from appliance.providers.factory import missing_keys

    return "offline" if missing_keys(config.stt, config.llm, config.tts) else "cloud"


def cloud_brain_factory(
    config: AppConfig,
    voice: LocalVoice,
    tools: Any = None,
    jobs: Any = None,
    speech: tuple[Any, Any] | None = None,
    tracing: Any = None,
    bus: EventBus | None = None,
) -> Callable[[], Brain]:
    """Check the cloud parts now (config errors name their TOML path), build them later in a worker thread.

    ``speech``: a (recognizer, synthesizer) pair used instead of the configured STT and TTS, whose settings are
    then not checked (dialog evaluation works on words only).
    """
    from appliance.agent import factory as agent_parts
    from appliance.providers import factory

    problems = factory.check_parts(config.stt, config.llm, config.tts) + agent_parts.check_parts(config.llm)
    if speech is not None:
        problems = [problem for problem in problems if not problem.startswith(("stt.", "tts."))]
    if problems:
        raise ConfigError("configuration", problems)

    def build() -> Brain:
        from appliance.brains.cloud import CloudBrain
        from appliance.hooks import load_hook

        llm_cfg, tts_cfg, conv = config.llm, config.tts, config.conversation
        llm = factory.build_llm(llm_cfg)
        if speech is None:
            stt = factory.build_stt(config.stt)
            tts, voices = factory.build_tts(tts_cfg, voice, llm)
        else:
            (stt, tts), voices = speech, {}
        if tracing is not None:  # every provider call a span of the turn's trace
            stt, llm, tts = tracing.wrap_stt(stt), tracing.wrap_llm(llm), tracing.wrap_tts(tts)
            voices = {language: tracing.wrap_tts(v) for language, v in voices.items()}
        registry = agent_parts.build_tools(llm_cfg, tools, picture_shower(bus) if bus is not None else None)
        camera = agent_parts.build_camera(llm_cfg)
        if camera is not None and llm_cfg.camera_tool:
            from appliance.agent.vision import camera_tool

            registry.add(camera_tool(camera))
        brain = CloudBrain(
            stt,
            llm,
            tts,
            conv.system_prompt,
            conv.system_prompt_params,
            config.stt.language,
            tts_cfg.prefetch,
            llm_cfg.timeout,
            tools=registry,
            max_tool_rounds=llm_cfg.max_tool_rounds,
            progress_after=llm_cfg.progress_after,
            progress_message=llm_cfg.progress_message,
            voices=voices,
            guardrails=agent_parts.build_guardrails(llm_cfg),
            camera=camera,
            merge_window=llm_cfg.merge_window,
            on_finish=load_hook(llm_cfg.on_finish, "llm.on_finish") if llm_cfg.on_finish else None,
            jobs=jobs,
        )
        if tracing is not None:
            from appliance.agent.tracing import TracedBrain

            return TracedBrain(brain, tracing)
        return brain

    return build


def picture_shower(bus: EventBus) -> Callable[[bytes, float, str], None]:
    """Puts a picture on the display, or says there is none to put it on (no display, or it is down)."""
    from appliance.agent.tools import ToolError
    from appliance.events import PictureRequested

    def show(picture: bytes, seconds: float, caption: str) -> None:
        if not bus.handled(PictureRequested):
            raise ToolError("this robot has no display showing pictures right now")
        bus.publish(PictureRequested(picture, seconds, caption))

    return show


def build_tracing(config: AppConfig) -> Any:
    """The OpenTelemetry exporter when ``[tracing]`` is on; None (and nothing imported) when it is off."""
    if not config.tracing.enabled:
        return None
    try:
        from appliance.agent.tracing import Tracing
        from appliance.providers import factory

        keys = [factory.key_for(c.provider, c.api_key) for c in (config.stt, config.llm, config.tts)]
        remote = config.remote.api_key.get_secret_value() if config.remote.api_key else None
        return Tracing(config.tracing, [k for k in (*keys, remote) if k])
    except ImportError:
        raise ConfigError(
            "configuration", ["tracing.enabled: needs the OpenTelemetry SDK (pip install 'appliance[tracing]')"]
        ) from None


def build_response_hooks(bus: EventBus, config: AppConfig) -> Any:
    from appliance.agent.response_hooks import ResponseHooks
    from appliance.hooks import HookError

    try:
        return ResponseHooks.from_config(bus, config.response_hooks)
    except HookError as exc:
        raise ConfigError("configuration", [str(exc)]) from None


class BrainService:
    """Runs a brain's background work (remote sessions, health probes) under the supervisor."""

    name = "brains"

    def __init__(self, brain: Any) -> None:
        self.brain = brain  # None after a reconfiguration to a brain without background work

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.brain is None:
            task_status.started()
            await trio.sleep_forever()
        await self.brain.run(task_status=task_status)


def brain_plan(config: AppConfig) -> list[str]:
    """The brains to use, most preferred first: ``conversation.brains``, else the single ``conversation.brain``."""
    if config.conversation.brains:
        return list(config.conversation.brains)
    return [choose_brain_kind(config)]


def build_brain(
    config: AppConfig, voice: LocalVoice, bus: EventBus, tools: Any = None, jobs: Any = None, tracing: Any = None
) -> tuple[Brain, DeferredBrain | None, Any]:
    """(the brain, the deferred cloud brain to prewarm if any, a brain with background work to supervise if any).

    ``tools`` and ``jobs`` are the cloud brain's tool registry and background-job runner, kept across rebuilds.
    """
    from appliance.brains.cloud import OfflineBrain

    plan = brain_plan(config)
    prewarm: DeferredBrain | None = None
    brains: list[Brain] = []
    probes: dict[str, Any] = {}
    for kind in plan:
        if kind == "cloud":
            prewarm = DeferredBrain("cloud", cloud_brain_factory(config, voice, tools, jobs, tracing=tracing, bus=bus))
            brains.append(prewarm)
            from appliance.brains.probes import models_probe

            llm = config.llm
            key = llm.api_key.get_secret_value() if llm.api_key else None
            probes["cloud"] = models_probe(llm.provider, llm.base_url, key, config.failover.probe_timeout)
        elif kind == "remote":
            from appliance.brains.remote import RemoteBrain

            remote_cfg = config.remote
            if remote_cfg.api_key is None:
                import os

                from appliance.settings.secrets import lookup_secret

                key = lookup_secret("", "remote_api_key", os.environ)  # LoadCredential=remote_api_key:...
                if key:
                    remote_cfg = remote_cfg.model_copy(update={"api_key": SecretStr(key)})
            brains.append(RemoteBrain(remote_cfg, bus=bus))
        elif kind == "home_assistant":
            if not config.home_assistant.esphome:
                problem = "conversation: the home_assistant brain needs home_assistant.esphome = true"
                raise ConfigError("configuration", [problem])
            from appliance.brains.home_assistant import HomeAssistantBrain
            from appliance.integrations.esphome.satellite import satellite_for

            brains.append(HomeAssistantBrain(satellite_for(bus, config.home_assistant)))
        else:
            brains.append(OfflineBrain(config.conversation.offline_message, voice))
    if len(brains) == 1:
        only = brains[0]
        return only, prewarm, only if hasattr(only, "run") else None
    from appliance.brains.failover import FailoverBrain

    failover = FailoverBrain(brains, config.failover, bus=bus, voice=voice, probes=probes)
    return failover, prewarm, failover


def wrap_for_text_wake(config: AppConfig, brain: Brain) -> Brain:
    """With the STT-text wake word, turns only go on when the transcript holds a wake phrase."""
    listening = config.listening
    if listening.mode != "wake_word" or listening.wake_word.engine != "text":
        return brain
    from appliance.listening.textwake import TextWakeBrain, TextWakeGate

    gate = TextWakeGate(listening.wake_word.phrases, listening.wake_word.wakeword_timeout)
    return TextWakeBrain(brain, gate)


def make_source(config: AppConfig) -> AudioSource:
    from appliance.audio.sources import SimulatedMicrophone, WavFileSource, bundled_clip

    audio = config.audio
    kind = audio.input
    if kind == "auto":
        from appliance.audio.device import has_device

        kind = "device" if has_device("input") else "simulated"
    if kind == "device":
        from appliance.audio.device import DeviceSource

        return DeviceSource(
            audio.input_device,
            audio.block_ms,
            device_block_ms=audio.device_block_ms,
            relaxed_ms=audio.idle_handover_ms,
        )
    if kind == "file":
        assert audio.input_file is not None
        return WavFileSource(audio.input_file, audio.block_ms)
    from appliance.audio.convert import read_wav

    phrase = read_wav(audio.input_file) if audio.input_file else bundled_clip("hello.wav")
    return SimulatedMicrophone(phrase, audio.simulated_speech_after, audio.simulated_repeat, audio.block_ms)


def make_sink(config: AppConfig) -> AudioSink:
    from appliance.audio.playback import SimulatedSink, WavFileSink

    audio = config.audio
    kind = audio.output
    if kind == "auto":
        from appliance.audio.device import has_device

        kind = "device" if has_device("output") else "simulated"
    if kind == "device":
        from appliance.audio.device import DeviceSink

        return DeviceSink(audio.output_device, audio.block_ms, audio.volume)
    if kind == "file":
        assert audio.output_file is not None
        return WavFileSink(audio.output_file, block_ms=audio.block_ms)
    return SimulatedSink(block_ms=audio.block_ms, volume=audio.volume)


def build_echo_canceller(config: AppConfig, source: AudioSource, sink: AudioSink) -> Any:
    """The echo canceller ``listening.echo_cancel`` runs here, its reference tapped from the sink (or None).

    Only a sink that plays (a ``BlockSink``) can feed it; a replacement sink without ``far_end`` keeps the guard.
    ``auto`` runs it only for a sound-card microphone: a simulated or file microphone hears no speaker.
    """
    from appliance.audio.echo import build_canceller

    listening = config.listening
    if not hasattr(sink, "far_end") or listening.self_trigger_guard == "gate":
        return None
    if listening.echo_cancel == "auto" and getattr(source, "name", "") != "device":
        return None
    echo = build_canceller(listening.echo_cancel, listening.noise_suppression)
    if echo is not None:
        sink.far_end = echo.tap
        log.info("echo cancellation: %s%s", echo.backend, " + noise suppression" if echo.noise_suppression else "")
    return echo


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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.supervisor.run(task_status=task_status)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self.config.supervisor.stop_timeout):
                await self.brain.aclose()
                if self.tracing is not None:  # the last turns' spans, as far as the stop allows
                    await trio.to_thread.run_sync(self.tracing.shutdown, abandon_on_cancel=True)


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
    prewarm: DeferredBrain | None = None
    background: Any = None
    tools: Any = None
    mcp: Any = None
    jobs: Any = None
    tracing: Any = None
    if brain is None:
        if "cloud" in brain_plan(config):
            from appliance.agent.factory import build_mcp
            from appliance.agent.tools import ToolRegistry

            tools = ToolRegistry()
            mcp = build_mcp(config.llm, tools)
            if config.llm.on_finish:
                from appliance.agent.background import BackgroundJobs

                jobs = BackgroundJobs()
        tracing = build_tracing(config)
        brain, prewarm, background = build_brain(config, voice, bus, tools, jobs, tracing)
        brain = wrap_for_text_wake(config, brain)
    log.info("brain: %s", " → ".join(brain_plan(config)) if background is not None else brain.name)
    source = source or make_source(config)
    sink = sink or make_sink(config)
    queue = BlockQueue()
    if config.home_assistant.esphome:  # the satellite streams microphone blocks to Home Assistant from here
        from appliance.integrations.esphome.satellite import TappedBlockQueue

        queue = TappedBlockQueue()
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
        brain,
        sink,
        utterance_receive,
        history,
        voice,
        conv_cfg.error_message,
        mid_reply_message=config.failover.mid_reply_message,
    )
    body = build_body(bus, config.hardware, pin_factory, brain_name=brain.name)
    response_hooks = build_response_hooks(bus, config)

    supervisor.add(state)
    capture = CaptureService(source, queue, bus)
    capture.echo = echo
    if echo is not None:
        listening.guard.canceller_converged = lambda: echo.converged
    supervisor.add(capture)
    supervisor.add(listening)
    supervisor.add(conversation)
    if status_handler is not None:
        supervisor.add(StatusLine(bus, status_handler), required=False)
    for part in body.services:  # after the status line, so it sees the first LED colour and face
        supervisor.add(part, required=False)
    if prewarm is not None:
        supervisor.add(PrewarmService(prewarm), required=False)
    if background is not None:
        supervisor.add(BrainService(background), required=False)
    if mcp is not None:
        supervisor.add(mcp, required=False)
    if jobs is not None:
        supervisor.add(jobs, required=False)
    supervisor.add(response_hooks, required=False)
    appliance = Appliance(
        config, bus, supervisor, state, conversation, listening, brain, source, sink, body, body.faces
    )
    appliance.tools = tools
    appliance.echo = echo
    appliance.response_hooks = response_hooks
    appliance.tracing = tracing
    from appliance.commands import Commands

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
    return appliance
