"""Health, status, audio devices and the live event stream."""

from __future__ import annotations

import dataclasses
from typing import Any

import trio
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from appliance import __version__
from appliance.control import models as m
from appliance.control.context import ControlContext
from appliance.control.routes.common import SSE, Ctx, finite, problem, protected
from appliance.control.sse import EventStream
from appliance.events import (
    AnimationRequested,
    ErrorRaised,
    Event,
    FaceChanged,
    Heard,
    MuteRequested,
    SentenceStarted,
    ServiceStatus,
    StateChanged,
    TurnFinished,
    TurnStarted,
)

public = APIRouter(prefix="/v1")
router = protected()

STREAMED_EVENTS: tuple[type[Event], ...] = (
    StateChanged,
    FaceChanged,
    AnimationRequested,
    TurnStarted,
    Heard,
    SentenceStarted,
    TurnFinished,
    ErrorRaised,
    ServiceStatus,
    MuteRequested,
)


@public.get("/health", response_model=m.Health, responses={503: {"model": m.Health}}, tags=["status"])
async def health(ctx: Ctx) -> Any:
    sup = ctx.appliance.supervisor
    stopping = sup.stop_reason is not None
    ready = sup.ready.is_set() and not stopping
    body = m.Health(
        status="stopping" if stopping else ("ok" if ready else "starting"),
        ready=ready,
        uptime=round(ctx.uptime(), 3),
        version=__version__,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/status", response_model=m.Status, tags=["status"])
async def status(ctx: Ctx) -> m.Status:
    app_ = ctx.appliance
    return m.Status(
        state=ctx.state().value,
        mode=ctx.config.listening.mode,
        muted=ctx.muted(),
        face=ctx.face(),
        brain=brain_status(app_.brain),
        subsystems=_subsystems(ctx),
        uptime=round(ctx.uptime(), 3),
        version=__version__,
        audio=_audio(ctx),
        last_turn=_last_turn(ctx.last_turn()),
        turns=app_.conversation.turns,
        queued_says=len(ctx.speaker.queue),
        echo=echo_status(app_),
    )


def _subsystems(ctx: ControlContext) -> list[m.Subsystem]:
    return [
        m.Subsystem(
            name=name,
            status=record.status,
            required=record.required,
            restarts=record.restarts,
            reconfigured=record.reconfigured,
            last_error=record.last_error,
        )
        for name, record in ctx.appliance.supervisor.records.items()
    ]


def _audio(ctx: ControlContext) -> m.AudioStatus:
    app_, audio = ctx.appliance, ctx.config.audio
    return m.AudioStatus(
        input=getattr(app_.source, "name", "?"),
        output=getattr(app_.sink, "name", "?"),
        input_device=audio.input_device,
        output_device=audio.output_device,
        volume=finite(getattr(app_.sink, "volume", None)),
        capture_overruns=ctx.capture_overruns(),
    )


def brain_status(brain: Any) -> m.BrainStatus:
    healthy = getattr(brain, "healthy", None)
    if callable(healthy):
        healthy = None
    detail = getattr(brain, "health", None)
    if callable(detail):
        detail = None
    if detail is not None and not isinstance(detail, str | int | float | bool | dict | list):
        detail = str(detail)
    return m.BrainStatus(
        name=str(getattr(brain, "name", "?")), healthy=healthy if isinstance(healthy, bool) else None, detail=detail
    )


def _last_turn(event: TurnFinished | None) -> m.LastTurn | None:
    if event is None:
        return None
    return m.LastTurn(
        turn_id=event.turn_id,
        outcome=event.outcome,
        spoken=event.spoken,
        error=event.error,
        timings=m.Timings(**dataclasses.asdict(event.timings)),
    )


def echo_status(app_: Any) -> m.EchoStatus:
    canceller = getattr(app_, "echo", None)
    if canceller is None:
        return m.EchoStatus(backend="off")
    stats = canceller.stats()
    return m.EchoStatus(
        backend=stats.backend,
        erle_db=finite(stats.erle_db),
        delay_ms=finite(stats.delay_ms),
        drift_ppm=stats.drift_ppm,
        resyncs=stats.resyncs,
        ran_dry=stats.ran_dry,
        late_ms=stats.late_ms,
        noise_suppression=stats.noise_suppression,
        state=stats.state,
        reason=stats.reason,
    )


@router.get("/devices", response_model=m.Devices, tags=["audio"])
async def devices(ctx: Ctx) -> m.Devices:
    from appliance.audio.device import AudioDeviceError, list_devices

    app_ = ctx.appliance
    found: list[m.Device] = []
    error = None
    try:
        infos = await trio.to_thread.run_sync(list_devices)
        found = [m.Device(**dataclasses.asdict(d)) for d in infos]
    except AudioDeviceError as exc:
        error = str(exc)
    return m.Devices(
        devices=found, input=getattr(app_.source, "name", "?"), output=getattr(app_.sink, "name", "?"), error=error
    )


@router.get("/events", tags=["status"], responses={200: SSE, 503: {"model": m.Problem}})
async def events(ctx: Ctx) -> EventStream:
    """State, face, turn, service and error events as they happen (``overflow`` then close if too slow)."""
    if not ctx.slots.take():
        raise problem(503, "too many open streams", {"Retry-After": "5"})

    async def produce(out: trio.MemorySendChannel[tuple[str, Any]]) -> None:
        with ctx.bus.subscribe(*STREAMED_EVENTS, name="control-sse", size=ctx.limits.sse_buffer) as sub:
            await out.send(("hello", {"state": ctx.state().value, "face": ctx.face(), "muted": ctx.muted()}))
            async for event in sub:
                if sub.dropped:
                    await out.send(("overflow", {"dropped": sub.dropped}))
                    return
                try:
                    out.send_nowait((_kind(event), _event_data(event)))
                except trio.WouldBlock:
                    await out.send(("overflow", {"dropped": 1}))
                    return

    return EventStream(produce, ctx.slots, buffer=ctx.limits.sse_buffer, heartbeat=ctx.limits.sse_heartbeat)


def _kind(event: Event) -> str:
    name = type(event).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _event_data(event: Event) -> dict[str, Any]:
    data = dataclasses.asdict(event)
    data.pop("at", None)
    for key, value in list(data.items()):
        if hasattr(value, "value"):  # enums
            data[key] = value.value
    return data
