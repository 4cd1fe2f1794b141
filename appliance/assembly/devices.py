"""The microphone, the speaker and the echo canceller between them, from ``[audio]`` and ``[listening]``."""

from __future__ import annotations

import logging
from typing import Any

from appliance.audio.base import AudioSink, AudioSource
from appliance.config import AppConfig

log = logging.getLogger(__name__)


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
            busy_ms=audio.busy_handover_ms,
        )
    if kind == "file":
        assert audio.input_file is not None
        return WavFileSource(audio.input_file, audio.block_ms, pace=audio.input_file_pace)
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
        from appliance.audio.device_sink import DeviceSink

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
