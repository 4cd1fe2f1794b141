"""Request and response bodies of the control API; they are its OpenAPI schema too."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$"


class Body(BaseModel):
    """A request body: unknown fields are errors and values are not coerced (``interrupt: 0`` is no bool)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Empty(Body):
    """The body of a command that takes no arguments: ``{}``, sent as JSON like every other body."""


class Problem(BaseModel):
    detail: str = Field(description="what is wrong")


class Health(BaseModel):
    status: Literal["ok", "starting", "stopping"]
    ready: bool
    uptime: float
    version: str


class Subsystem(BaseModel):
    name: str
    status: str = Field(description="starting | running | restarting | failed | stopped")
    required: bool
    restarts: int = Field(description="restarts after a failure")
    reconfigured: int = Field(description="restarts for a configuration change")
    last_error: str | None


class BrainStatus(BaseModel):
    name: str
    healthy: bool | None = Field(description="None when the brain does not report its health")
    detail: Any = None


class AudioStatus(BaseModel):
    input: str
    output: str
    input_device: str | int | None
    output_device: str | int | None
    volume: float | None
    capture_overruns: int


class EchoStatus(BaseModel):
    """The echo canceller in the capture path (listening.echo_cancel)."""

    backend: str = Field(description="webrtc, or off (the self-trigger guard alone)")
    erle_db: float | None = Field(default=None, description="echo reduction over the last seconds of robot speech")
    delay_ms: float | None = Field(default=None, description="how long after the speaker's block its echo arrives")
    drift_ppm: float = Field(default=0.0, description="speaker/mic clock drift the reference is resampled by")
    resyncs: int = 0
    ran_dry: int = Field(
        default=0, description="microphone blocks whose speaker reference had not all arrived (padded)"
    )
    late_ms: float = Field(default=0.0, description="speaker reference that came after its microphone samples, in all")
    noise_suppression: bool = False
    state: str = Field(
        default="off",
        description="running; backed_off (echo_cancel = auto switched it off: it could not stay aligned, the guard "
        "has its full margin); misaligned (echo_cancel = webrtc keeps it on regardless); off",
    )
    reason: str | None = Field(default=None, description="why it is backed off or misaligned")


class Timings(BaseModel):
    heard: float | None
    first_text: float | None
    first_audio: float | None
    finished: float | None


class LastTurn(BaseModel):
    turn_id: str
    outcome: str
    spoken: str
    error: str | None
    timings: Timings


class Status(BaseModel):
    state: str
    mode: str
    muted: bool
    face: str
    brain: BrainStatus
    subsystems: list[Subsystem]
    uptime: float
    version: str
    audio: AudioStatus
    last_turn: LastTurn | None
    turns: int
    queued_says: int
    echo: EchoStatus = Field(default_factory=lambda: EchoStatus(backend="off"))


class ListenerStatus(BaseModel):
    mode: str
    muted: bool
    listening: bool
    state: str


class Muted(BaseModel):
    muted: bool


class VolumeRequest(Body):
    volume: float = Field(ge=0.0, le=2.0, description="output gain, 1.0 = as synthesized")


class Volume(BaseModel):
    volume: float


class SayRequest(Body):
    text: str = Field(min_length=1, description="what to say; [face:...] tags are allowed")
    face: str | None = Field(default=None, pattern=NAME_PATTERN, description="face shown when the line starts")
    animation: str | None = Field(default=None, pattern=NAME_PATTERN)
    interrupt: bool = Field(default=False, description="stop the current turn and speak now instead of queueing")


class PerformRequest(Body):
    # At least one of text, face, animation: said in the schema too, so a client can know before asking.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "string"}}} for name in ("text", "face", "animation")
            ]
        }
    )

    text: str | None = Field(default=None, min_length=1)
    face: str | None = Field(default=None, pattern=NAME_PATTERN)
    face_duration: float | None = Field(default=None, gt=0, le=3600)
    animation: str | None = Field(default=None, pattern=NAME_PATTERN)
    animation_duration: float | None = Field(default=None, gt=0, le=3600)
    interrupt: bool = False


class SayAccepted(BaseModel):
    id: str
    position: int = Field(description="0 = speaking now, n = waiting n-th")
    interrupt: bool


class Performed(BaseModel):
    face: str | None
    animation: str | None
    say: SayAccepted | None


class FaceRequest(Body):
    name: str = Field(pattern=NAME_PATTERN)
    duration: float | None = Field(default=None, gt=0, le=3600, description="seconds; default: the face service's")


class AnimationRequest(FaceRequest):
    pass


class Shown(BaseModel):
    name: str


class ConversationRequest(Body):
    text: str = Field(min_length=1, description="what the user says")
    audio: bool = Field(default=False, description="include each sentence's speech as base64 WAV")
    interrupt: bool = Field(default=True, description="interrupt a running turn (else 409 while one runs)")


class Cancelled(BaseModel):
    cancelled: bool


class HistorySummary(BaseModel):
    id: str
    started_at: float | None
    updated_at: float | None
    turns: int
    preview: str
    current: bool


class HistoryTurn(BaseModel):
    turn_id: str
    at: float
    brain: str | None = Field(description="the brain whose reply was spoken")
    heard: str | None
    spoken: str
    outcome: str = Field(description="done | interrupted | failed | empty | cut off (the process died mid-turn)")
    error: str | None
    timings: Timings | None = None
    audio_seconds: float | None = Field(default=None, description="how long the user spoke")
    source: str | None = None


class History(BaseModel):
    id: str
    started_at: float | None
    updated_at: float | None
    current: bool
    turns: list[HistoryTurn]


class Histories(BaseModel):
    histories: list[HistorySummary]


class ConfigPatched(BaseModel):
    applied: list[str] = Field(description="changed in place")
    restarted: list[str] = Field(description="subsystems restarted")
    restart_required: list[str] = Field(description="takes effect at the next start of the appliance")
    previous_file: str
    config: dict[str, Any]


class Device(BaseModel):
    index: int
    name: str
    inputs: int
    outputs: int
    default_rate: float
    hostapi: str


class Devices(BaseModel):
    devices: list[Device]
    input: str
    output: str
    error: str | None = None
