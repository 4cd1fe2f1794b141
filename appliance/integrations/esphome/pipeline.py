"""One Assist pipeline run as Home Assistant sees it from us: the request, the microphone audio streamed into
it, and the events it sends back (transcript, reply text, reply speech URL, errors)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from appliance.integrations.esphome.messages import pb

log = logging.getLogger(__name__)

_EVENTS = 128  # pipeline events queued for the brain that reads them
EV = pb.VoiceAssistantEvent.Value


class Peer(Protocol):
    """The connection Home Assistant subscribed to voice on."""

    name: str

    def send(self, *messages: Any) -> None: ...


@dataclass
class PipelineEvent:
    kind: int
    data: dict[str, str]

    @property
    def name(self) -> str:
        return pb.VoiceAssistantEvent.Name(self.kind).removeprefix("VOICE_ASSISTANT_")


class Pipeline:
    """One Assist run: our audio out, its events in."""

    def __init__(self, peer: Peer, wake_word: str, conversation_id: str) -> None:
        self.peer = peer
        self.id = uuid.uuid4().hex[:8]
        self.wake_word = wake_word
        self.conversation_id = conversation_id
        self.started_at = trio.current_time()
        self.first_audio_at: float | None = None
        self.audio_bytes = 0
        self.streaming = True
        self.claimed = False
        self.finished = False
        self._send, self.events = trio.open_memory_channel[PipelineEvent](_EVENTS)

    def feed(self, pcm: bytes) -> None:
        if not self.streaming or self.finished:
            return
        if self.first_audio_at is None:
            self.first_audio_at = trio.current_time()
        self.audio_bytes += len(pcm)
        self.peer.send(pb.VoiceAssistantAudio(data=pcm))

    def end_audio(self) -> None:
        if self.streaming and not self.finished:
            self.streaming = False
            self.peer.send(pb.VoiceAssistantAudio(end=True))

    def abort(self, reason: str) -> None:
        if self.finished:
            return
        log.info("pipeline %s stopped: %s", self.id, reason)
        self.streaming = False
        self.finished = True
        self.peer.send(pb.VoiceAssistantRequest(start=False))
        self._send.close()

    def deliver(self, event: PipelineEvent) -> None:
        if self.finished:
            return
        if event.kind in (EV("VOICE_ASSISTANT_STT_VAD_END"), EV("VOICE_ASSISTANT_STT_END")):
            self.streaming = False  # Home Assistant has heard enough
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            log.warning("pipeline %s: events are not being read; dropped %s", self.id, event.name)
        if event.kind == EV("VOICE_ASSISTANT_RUN_END"):
            self.finished = True
            self.streaming = False
            self._send.close()

    def fail(self, message: str) -> None:
        self.deliver(PipelineEvent(EV("VOICE_ASSISTANT_ERROR"), {"code": "connection", "message": message}))
        self.finished = True
        self.streaming = False
        self._send.close()
