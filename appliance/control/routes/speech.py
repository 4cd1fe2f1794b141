"""Speaking, faces and animations: lines to say, expressions to show."""

from __future__ import annotations

from fastapi.responses import Response

from appliance.control import models as m
from appliance.control.face_image import face_png
from appliance.control.names import check_names
from appliance.control.routes.common import BUSY, Ctx, check_text, invalid, protected, submit
from appliance.events import AnimationRequested, FaceRequested

router = protected()


@router.post("/say", response_model=m.SayAccepted, status_code=202, tags=["speech"], responses=BUSY)
async def say(body: m.SayRequest, ctx: Ctx) -> m.SayAccepted:
    """Speak a line; queued behind the running turn unless ``interrupt``. Face/animation start with it."""
    text = check_text(ctx, body.text)
    check_names(ctx, face=body.face, animation=body.animation)
    wanted = (("face", body.face), ("animation", body.animation))
    tags = "".join(f"[{kind}:{value}]" for kind, value in wanted if value)
    return submit(ctx, f"{tags} {text}" if tags else text, body.interrupt)


@router.post("/perform", response_model=m.Performed, status_code=202, tags=["speech"], responses=BUSY)
async def perform(body: m.PerformRequest, ctx: Ctx) -> m.Performed:
    """Show a face and start an animation now, and say a line (all optional, at least one)."""
    if body.text is None and body.face is None and body.animation is None:
        raise invalid(["body"], "give at least one of text, face, animation")
    text = check_text(ctx, body.text) if body.text is not None else None
    check_names(ctx, face=body.face, animation=body.animation)
    accepted = submit(ctx, text, body.interrupt) if text is not None else None
    if body.face:
        ctx.bus.publish(FaceRequested(body.face, body.face_duration))
    if body.animation:
        ctx.bus.publish(AnimationRequested(body.animation, body.animation_duration))
    return m.Performed(face=body.face, animation=body.animation, say=accepted)


@router.post("/face", response_model=m.Shown, tags=["body"])
async def face(body: m.FaceRequest, ctx: Ctx) -> m.Shown:
    check_names(ctx, face=body.name, face_loc=("body", "name"))
    ctx.bus.publish(FaceRequested(body.name, body.duration))
    return m.Shown(name=body.name)


@router.post("/animation", response_model=m.Shown, tags=["body"])
async def animation(body: m.AnimationRequest, ctx: Ctx) -> m.Shown:
    check_names(ctx, animation=body.name, animation_loc=("body", "name"))
    ctx.bus.publish(AnimationRequested(body.name, body.duration))
    return m.Shown(name=body.name)


@router.get(
    "/face.png",
    response_class=Response,
    tags=["body"],
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def face_image(ctx: Ctx) -> Response:
    faces = ctx.appliance.faces
    render = getattr(faces, "render_png", None)
    data = render() if callable(render) else None
    if data is None:
        data = face_png(ctx.face())
    return Response(data, media_type="image/png", headers={"cache-control": "no-store"})
