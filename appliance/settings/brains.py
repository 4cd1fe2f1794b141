"""Configuration of the remote brain (``[remote]``), failover between brains (``[failover]``) and the server
that lets a PC be the remote for several robots (``[server]``)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from appliance.settings_base import Section


class RemoteConfig(Section):
    """A conversation server on the LAN that speaks the AIAvatarKit WebSocket protocol."""

    url: str = Field(default="ws://127.0.0.1:8000/ws", description="ws:// or wss:// address of the server's /ws")
    api_key: SecretStr | None = Field(default=None, description="sent as 'Authorization: Bearer KEY'")
    user_id: str = Field(default="appliance", min_length=1, description="who is talking, as the server sees it")
    input: Literal["utterance", "stream"] = Field(
        default="utterance",
        description="utterance = send our endpointed utterance whole (invoke); "
        "stream = send it as mic data frames and let the server's VAD end it",
    )
    stream_block_ms: int = Field(default=100, ge=10, le=1000, description="size of each data frame (ms of audio)")
    stream_tail: float = Field(default=1.0, ge=0, le=10, description="silence streamed after the speech (s)")
    connect_timeout: float = Field(default=3.0, gt=0, description="TCP + WebSocket + session handshake (s)")
    heartbeat_interval: float = Field(default=2.0, gt=0, description="seconds between WebSocket pings")
    heartbeat_timeout: float = Field(default=2.0, gt=0, description="a pong later than this means the server is frozen")
    ack_timeout: float = Field(
        default=1.0, gt=0, description="each request is sent with a ping; no pong this fast means a frozen server (s)"
    )
    reply_timeout: float = Field(default=15.0, gt=0, description="seconds to the first reply frame of a turn")
    frame_timeout: float = Field(default=15.0, gt=0, description="longest silence between frames of one reply (s)")
    reconnect_initial_delay: float = Field(default=0.5, gt=0, description="first reconnect delay (s)")
    reconnect_max_delay: float = Field(default=30.0, gt=0, description="reconnect delays double up to this (s)")
    verify_tls: bool = Field(default=True, description="check the server certificate on wss://")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError("must start with ws:// or wss://")
        if not parts.hostname:
            raise ValueError("has no host")
        return value


class FailoverConfig(Section):
    """How the ordered ``conversation.brains`` list moves from one brain to the next, and back."""

    failure_threshold: int = Field(
        default=2,
        ge=1,
        le=100,
        description="consecutive failures that open a brain's circuit (a timeout opens it at once)",
    )
    open_initial: float = Field(default=5.0, gt=0, description="first time an open circuit stays open (s)")
    open_max: float = Field(
        default=120.0, gt=0, description="open time doubles after each failed probe, up to this (s)"
    )
    probe_timeout: float = Field(default=5.0, gt=0, description="a background health probe must answer within (s)")
    health_interval: float = Field(
        default=30.0,
        ge=0,
        description="probe healthy brains this often too, so an outage is found before the user speaks (s); 0 = off",
    )
    first_audio_timeout: float = Field(
        default=8.0, gt=0, description="a brain that has produced no speech after this long is skipped (s)"
    )
    hedge_after: float = Field(
        default=0.8,
        ge=0,
        description="a brain that shows no sign of life (no transcript, no speech) this long after the utterance "
        "is joined by the next brain that does real work (not offline); the first to speak answers (s); 0 = off",
    )
    mid_reply_message: str = Field(
        default="Sorry, I lost my connection.", description="said when a brain fails in the middle of its reply"
    )

    @model_validator(mode="after")
    def _check_open(self) -> FailoverConfig:
        if self.open_max < self.open_initial:
            raise ValueError("open_max must be at least open_initial")
        return self


class ServerConfig(Section):
    """``appliance serve``: our cloud pipeline behind the AIAvatarKit WebSocket protocol."""

    host: str = Field(default="127.0.0.1", description="address to listen on; any other than loopback needs api_key")
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(default=None, description="clients must send this as a Bearer token")
    max_connections: int = Field(default=16, ge=1, le=1000, description="robots served at once")
    max_sessions: int = Field(default=4, ge=1, le=100, description="sessions one connection may hold open")
    start_timeout: float = Field(default=10.0, gt=0, description="a new connection must start a session within (s)")
    idle_timeout: float = Field(
        default=300.0, gt=0, description="a connection silent this long, with no reply running, is closed (s)"
    )
    max_audio_seconds: float = Field(default=60.0, gt=0, le=600, description="longest audio one invoke may carry (s)")
    max_audio_in_flight: int = Field(
        default=32 * 1024 * 1024, ge=1024 * 1024, description="PCM bytes of all invokes being answered at once"
    )
    pcm: bool = Field(default=False, description="send speech as raw PCM chunks instead of WAV")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="processes serving robots (one port; above 1 they share conversations in a SQLite file)",
    )
    http_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="also serve the HTTP/SSE API (AIAvatarKit's, Dify's) here; unset = off",
    )
