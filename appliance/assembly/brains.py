"""The brain from configuration: cloud (built off the event loop), remote, Home Assistant, offline, a failover
chain of them; with tracing and behaviour hooks around."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, cast

import trio
from pydantic import SecretStr

from appliance.bus import EventBus
from appliance.config import AppConfig
from appliance.conversation.local_voice import LocalVoice
from appliance.settings_base import ConfigError
from appliance.turns import Brain, BrainOutput, TurnRequest

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

    return partial(_build_cloud_brain, config, voice, tools, jobs, speech, tracing, bus)


def _cloud_providers(config: AppConfig, voice: LocalVoice, speech: tuple[Any, Any] | None, tracing: Any) -> Any:
    """(stt, llm, tts, voices by language), each wrapped in tracing spans when tracing is on."""
    from appliance.providers import factory

    llm = factory.build_llm(config.llm)
    if speech is None:
        stt = factory.build_stt(config.stt)
        tts, voices = factory.build_tts(config.tts, voice, llm)
    else:
        (stt, tts), voices = speech, {}
    if tracing is not None:  # every provider call a span of the turn's trace
        stt, llm, tts = tracing.wrap_stt(stt), tracing.wrap_llm(llm), tracing.wrap_tts(tts)
        voices = {language: tracing.wrap_tts(v) for language, v in voices.items()}
    return stt, llm, tts, voices


def _build_cloud_brain(
    config: AppConfig,
    voice: LocalVoice,
    tools: Any,
    jobs: Any,
    speech: tuple[Any, Any] | None,
    tracing: Any,
    bus: EventBus | None,
) -> Brain:
    from appliance.agent import factory as agent_parts
    from appliance.brains.cloud import CloudBrain
    from appliance.hooks import load_hook

    llm_cfg, conv = config.llm, config.conversation
    stt, llm, tts, voices = _cloud_providers(config, voice, speech, tracing)
    registry = agent_parts.build_tools(llm_cfg, tools, picture_shower(bus) if bus is not None else None)
    camera = agent_parts.build_camera(llm_cfg)
    if camera is not None and llm_cfg.camera_tool:
        from appliance.agent.vision import camera_tool

        registry.add(camera_tool(camera))
    brain = CloudBrain.build(
        stt,
        llm,
        tts,
        conv.system_prompt,
        conv.system_prompt_params,
        config.stt.language,
        config.tts.prefetch,
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
    return brain  # the turn's span is opened around the whole chain (build_brain), not here


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

    def reconfigure(self, brain: Any) -> None:
        """The new brain list's background work (None: none); takes effect when the supervisor restarts this."""
        self.brain = brain

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


BrainBuilders = Mapping[str, Callable[[AppConfig], Brain]]


def build_brain(
    config: AppConfig,
    voice: LocalVoice,
    bus: EventBus,
    tools: Any = None,
    jobs: Any = None,
    tracing: Any = None,
    builders: BrainBuilders | None = None,
) -> tuple[Brain, DeferredBrain | None, Any]:
    """(the brain, the deferred cloud brain to prewarm if any, a brain with background work to supervise if any).

    ``tools`` and ``jobs`` are the cloud brain's tool registry and background-job runner, kept across rebuilds;
    ``builders`` make the brains that come from an integration (``home_assistant``), given by the top level.
    """
    from appliance.brains.offline import OfflineBrain

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
            if not config.home_assistant.esphome or not builders or kind not in builders:
                problem = "conversation: the home_assistant brain needs home_assistant.esphome = true"
                raise ConfigError("configuration", [problem])
            brains.append(builders[kind](config))
        else:
            brains.append(OfflineBrain(config.conversation.offline_message, voice))
    if len(brains) == 1:
        only = brains[0]
        return traced_brain(only, tracing), prewarm, only if hasattr(only, "run") else None
    from appliance.brains.failover import FailoverBrain

    if tracing is not None:  # a span for each brain asked, under the turn's
        from appliance.agent.turn_tracing import TracedAttempt

        brains = [TracedAttempt(b, tracing) for b in brains]
    failover = FailoverBrain(brains, config.failover, bus=bus, voice=voice, probes=probes)
    return traced_brain(failover, tracing), prewarm, failover


def serving_brain(config: AppConfig) -> tuple[Brain, Any]:
    """What ``appliance serve`` answers with: the cloud brain, built now, each turn traced when ``[tracing]`` is on;
    and the tracing to shut down (flushing the last spans) when serving ends."""
    from dataclasses import replace

    from appliance.brains.cloud import CloudBrain
    from appliance.conversation.local_voice import LocalVoice

    tracing = build_tracing(config)
    brain = cloud_brain_factory(config, LocalVoice(), tracing=tracing)()
    if isinstance(brain, CloudBrain):  # a reply's [vision:camera] asks the client to look (a `vision` frame)
        brain.agent = replace(brain.agent, client_camera=True)
    return traced_brain(brain, tracing), tracing


def traced_brain(brain: Brain, tracing: Any) -> Brain:
    """With tracing on, every turn of ``brain`` is a trace naming the brain that answered."""
    if tracing is None:
        return brain
    from appliance.agent.turn_tracing import TracedBrain

    return cast(Brain, TracedBrain(brain, tracing))


def wrap_for_text_wake(config: AppConfig, brain: Brain) -> Brain:
    """With the STT-text wake word, turns only go on when the transcript holds a wake phrase."""
    listening = config.listening
    if listening.mode != "wake_word" or listening.wake_word.engine != "text":
        return brain
    from appliance.listening.textwake import TextWakeBrain, TextWakeGate

    gate = TextWakeGate(listening.wake_word.phrases, listening.wake_word.wakeword_timeout)
    return TextWakeBrain(brain, gate)
