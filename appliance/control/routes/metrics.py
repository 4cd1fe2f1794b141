"""Prometheus text format: turns, stage latencies, errors, restarts, audio overruns, echo, the API itself."""

from __future__ import annotations

from fastapi.responses import Response

from appliance import __version__
from appliance.control.context import ControlContext
from appliance.control.metrics import Exposition
from appliance.control.routes.common import Ctx, protected
from appliance.control.routes.status import echo_status
from appliance.events import State

router = protected()


@router.get(
    "/metrics",
    response_class=Response,
    tags=["status"],
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(ctx: Ctx) -> Response:
    """Prometheus text format: turns, stage latencies, errors, restarts, audio overruns."""
    return Response(metrics_text(ctx), media_type="text/plain; version=0.0.4; charset=utf-8")


def metrics_text(ctx: ControlContext) -> str:
    out = Exposition()
    _process(ctx, out)
    _turns(ctx, out)
    _subsystems(ctx, out)
    _audio(ctx, out)
    _plumbing(ctx, out)
    return out.text()


def _process(ctx: ControlContext, out: Exposition) -> None:
    out.family("appliance_up", "gauge", "1 while the appliance runs", [({"version": __version__}, 1)])
    out.family("appliance_uptime_seconds", "gauge", "seconds since start", [({}, round(ctx.uptime(), 3))])
    states = [({"state": s.value}, int(ctx.state() is s)) for s in State]
    out.family("appliance_state", "gauge", "1 for the current state", states)
    out.family("appliance_muted", "gauge", "1 while the microphone is muted", [({}, int(ctx.muted()))])


def _turns(ctx: ControlContext, out: Exposition) -> None:
    metrics = ctx.metrics
    turns = [({"outcome": k}, v) for k, v in sorted(metrics.turns.items())] or [({"outcome": "done"}, 0)]
    out.family("appliance_turns_total", "counter", "finished turns by outcome", turns)
    out.histogram(
        "appliance_turn_stage_seconds", "time from the end of the utterance to each stage", "stage", metrics.stages
    )
    errors = [({"where": k}, v) for k, v in sorted(metrics.errors.items())] or [({"where": "turn"}, 0)]
    out.family("appliance_errors_total", "counter", "errors by where they happened", errors)


def _subsystems(ctx: ControlContext, out: Exposition) -> None:
    records = ctx.appliance.supervisor.records
    restarts = [({"subsystem": n}, r.restarts) for n, r in records.items()]
    out.family("appliance_subsystem_restarts_total", "counter", "restarts after a failure", restarts)
    reconfigured = [({"subsystem": n}, r.reconfigured) for n, r in records.items()]
    out.family("appliance_subsystem_reconfigured_total", "counter", "restarts for a configuration change", reconfigured)
    up = [({"subsystem": n}, int(r.status == "running")) for n, r in records.items()]
    out.family("appliance_subsystem_up", "gauge", "1 while the subsystem runs", up)


def _audio(ctx: ControlContext, out: Exposition) -> None:
    app_ = ctx.appliance
    xruns = [({"direction": "capture"}, ctx.capture_overruns())]
    for direction, part in (("capture_device", app_.source), ("playback", app_.sink)):
        count = getattr(part, "xruns", None)
        if isinstance(count, int):
            xruns.append(({"direction": direction}, count))
    out.family("appliance_audio_xruns_total", "counter", "audio blocks lost (overruns/underruns)", xruns)
    echo = echo_status(app_)
    active = [({"backend": echo.backend}, int(echo.backend != "off" and echo.state != "backed_off"))]
    out.family("appliance_echo_cancel_active", "gauge", "1 while the echo canceller runs (0 when backed off)", active)
    dry: list[tuple[dict[str, str], float]] = [({}, echo.ran_dry)]
    out.family(
        "appliance_echo_reference_ran_dry_total", "counter", "microphone blocks whose reference had not arrived", dry
    )
    if echo.erle_db is not None:
        erle: list[tuple[dict[str, str], float]] = [({}, echo.erle_db)]
        out.family(
            "appliance_echo_erle_db", "gauge", "echo reduction (ERLE) over the last seconds of robot speech", erle
        )
    if echo.delay_ms is not None:
        delay: list[tuple[dict[str, str], float]] = [({}, echo.delay_ms)]
        out.family("appliance_echo_delay_ms", "gauge", "delay from the speaker's block to its echo at the mic", delay)


def _plumbing(ctx: ControlContext, out: Exposition) -> None:
    bus = ctx.appliance.bus
    out.family("appliance_bus_events_total", "counter", "events published", [({}, bus.published)])
    out.family("appliance_bus_dropped_total", "counter", "events dropped for slow subscribers", [({}, bus.dropped)])
    out.family("appliance_control_streams", "gauge", "open event streams", [({}, ctx.slots.open)])
    answers = [({"code": str(code)}, n) for code, n in sorted(ctx.metrics.responses.items())] or [({"code": "200"}, 0)]
    out.family("appliance_control_responses_total", "counter", "API answers by HTTP status, refusals included", answers)
