"""Listening, mute and volume: the microphone and the speaker, like the robot's own buttons."""

from __future__ import annotations

from appliance.commands import CommandRejected
from appliance.control import models as m
from appliance.control.context import ControlContext
from appliance.control.routes.common import Ctx, problem, protected
from appliance.events import State

router = protected()


def listener_status(ctx: ControlContext) -> m.ListenerStatus:
    state = ctx.state()
    return m.ListenerStatus(
        mode=ctx.config.listening.mode, muted=ctx.muted(), listening=state is State.LISTENING, state=state.value
    )


@router.post(
    "/listener/start", response_model=m.ListenerStatus, tags=["listening"], responses={409: {"model": m.Problem}}
)
async def listener_start(_body: m.Empty, ctx: Ctx) -> m.ListenerStatus:
    """Open the microphone for one utterance, like pressing the talk button."""
    try:
        ctx.commands.listen("api")
    except CommandRejected as exc:
        raise problem(409, str(exc)) from None
    return listener_status(ctx)


@router.post("/listener/stop", response_model=m.ListenerStatus, tags=["listening"])
async def listener_stop(_body: m.Empty, ctx: Ctx) -> m.ListenerStatus:
    """End the utterance now, like releasing the talk button."""
    ctx.commands.release("api")
    return listener_status(ctx)


@router.get("/listener/status", response_model=m.ListenerStatus, tags=["listening"])
async def listener_get(ctx: Ctx) -> m.ListenerStatus:
    return listener_status(ctx)


@router.post("/mute", response_model=m.Muted, tags=["listening"])
async def mute(_body: m.Empty, ctx: Ctx) -> m.Muted:
    """Stop listening (e.g. during a meeting); the robot still speaks when asked to."""
    return m.Muted(muted=ctx.commands.set_muted(True, "api"))


@router.post("/unmute", response_model=m.Muted, tags=["listening"])
async def unmute(_body: m.Empty, ctx: Ctx) -> m.Muted:
    return m.Muted(muted=ctx.commands.set_muted(False, "api"))


@router.post("/volume", response_model=m.Volume, tags=["audio"], responses={409: {"model": m.Problem}})
async def volume(body: m.VolumeRequest, ctx: Ctx) -> m.Volume:
    """Change the output gain now (PATCH /config audio.volume makes it permanent)."""
    sink = ctx.appliance.sink
    if not hasattr(sink, "volume"):
        raise problem(409, f"the {getattr(sink, 'name', 'current')} speaker has no volume control")
    sink.volume = body.volume
    return m.Volume(volume=body.volume)
