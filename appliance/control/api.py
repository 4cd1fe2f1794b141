"""The routes of the control API (FastAPI on hypercorn's Trio worker).

Everything is under ``/v1`` and needs ``Authorization: Bearer <token>`` when a token is configured, except
``/v1/health``. Without a token (loopback only) requests must name a loopback Host, which keeps web pages
from reaching the robot through DNS rebinding.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import math
from typing import Annotated, Any
from urllib.parse import urlsplit

import trio
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance import __version__
from appliance.audio.base import AudioClip
from appliance.audio.convert import encode_wav
from appliance.auth import host_header_is_loopback, token_matches
from appliance.commands import CommandRejected
from appliance.control import models as m
from appliance.control.config_patch import PatchRejected, changed_sections, plan_patch, write_config
from appliance.control.context import ControlContext
from appliance.control.face_image import face_png
from appliance.control.histories import ID_PATTERN
from appliance.control.metrics import Exposition
from appliance.control.names import check_names
from appliance.control.sse import EventStream, Slots
from appliance.events import (
    AnimationRequested,
    ErrorRaised,
    Event,
    FaceChanged,
    FaceRequested,
    Heard,
    MuteRequested,
    SentenceStarted,
    ServiceStatus,
    State,
    StateChanged,
    TurnFinished,
    TurnStarted,
)
from appliance.speaker import QueueFull, TappedBrain
from appliance.turns import ReplyChunk, Transcript, Utterance

log = logging.getLogger(__name__)

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

HistoryId = Annotated[str, Path(pattern=ID_PATTERN, description="conversation id")]

_bearer = HTTPBearer(auto_error=False, description="the token from control.token / token_file")

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": m.Problem, "description": "body cannot be read (not UTF-8)"},
    401: {"model": m.Problem, "description": "no bearer token"},
    403: {"model": m.Problem, "description": "wrong token"},
    413: {"model": m.Problem, "description": "body too large"},
    415: {"model": m.Problem, "description": "body is not JSON"},
}
SSE_EVENT = {
    "type": "object",
    "description": "one Server-Sent Event; data is JSON",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}},
    "required": ["event", "data"],
}
SSE = {"content": {"text/event-stream": {"itemSchema": SSE_EVENT}}, "description": "Server-Sent Events"}


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


def _invalid(loc: list[str], msg: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return HTTPException(status_code=422, detail=[{"loc": loc, "msg": msg, "type": "value_error"}])


def _patch_schema() -> dict[str, Any]:
    from appliance.config import AppConfig

    sections = sorted({*AppConfig.model_fields, "gpio"})
    return {
        "description": "JSON Merge Patch of the configuration: sections of settings; null resets to the default. "
        "Checked like a fresh start, so a patch the schema allows may still be refused (422).",
        "propertyNames": {"enum": sections},
        "additionalProperties": {"anyOf": [{"type": "object"}, {"type": "null"}]},
    }


PATCH_SCHEMA = _patch_schema()


def create_app(ctx: ControlContext) -> FastAPI:
    app = FastAPI(
        title="appliance control API",
        version=__version__,
        description="Manage a talking robot on the local network: status, speech, faces, mute, config.",
        docs_url=None,
        openapi_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    slots = ctx.slots

    async def authorize(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> None:
        if ctx.token is None:
            if not host_header_is_loopback(request.headers.get("host")):
                raise _problem(403, "without a token only loopback Host names are accepted")
            return
        if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
            raise _problem(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        if not token_matches(credentials.credentials, ctx.token):
            raise _problem(403, "wrong token")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=ERRORS)
    public = APIRouter(prefix="/v1")

    @app.exception_handler(RequestValidationError)
    async def _validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method the path takes, not only those of the first route matched
            headers["Allow"] = ", ".join(sorted(_allowed_methods(app, request.scope)))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    # --- health and status ----------------------------------------------------------------------------

    @public.get("/health", response_model=m.Health, responses={503: {"model": m.Health}}, tags=["status"])
    async def health() -> Any:
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

    @v1.get("/status", response_model=m.Status, tags=["status"])
    async def status() -> m.Status:
        app_ = ctx.appliance
        subsystems = []
        for name, record in app_.supervisor.records.items():
            subsystems.append(
                m.Subsystem(
                    name=name,
                    status=record.status,
                    required=record.required,
                    restarts=record.restarts,
                    reconfigured=getattr(record.service, "reconfigured", 0),
                    last_error=record.last_error,
                )
            )
        last = ctx.last_turn()
        audio = ctx.config.audio
        capture = ctx.restartables.get("capture")
        queue = getattr(getattr(capture, "inner", None), "queue", None)
        return m.Status(
            state=ctx.state().value,
            mode=ctx.config.listening.mode,
            muted=ctx.muted(),
            face=ctx.face(),
            brain=_brain_status(app_.brain),
            subsystems=subsystems,
            uptime=round(ctx.uptime(), 3),
            version=__version__,
            audio=m.AudioStatus(
                input=getattr(app_.source, "name", "?"),
                output=getattr(app_.sink, "name", "?"),
                input_device=audio.input_device,
                output_device=audio.output_device,
                volume=_finite(getattr(app_.sink, "volume", None)),
                capture_overruns=getattr(queue, "dropped", 0),
            ),
            last_turn=_last_turn(last),
            turns=app_.conversation.turns,
            queued_says=len(ctx.speaker.queue),
            echo=_echo_status(app_),
        )

    # --- listening and mute -----------------------------------------------------------------------------

    def listener_status() -> m.ListenerStatus:
        state = ctx.state()
        return m.ListenerStatus(
            mode=ctx.config.listening.mode, muted=ctx.muted(), listening=state is State.LISTENING, state=state.value
        )

    @v1.post(
        "/listener/start", response_model=m.ListenerStatus, tags=["listening"], responses={409: {"model": m.Problem}}
    )
    async def listener_start(_body: m.Empty) -> m.ListenerStatus:
        """Open the microphone for one utterance, like pressing the talk button."""
        try:
            ctx.commands.listen("api")
        except CommandRejected as exc:
            raise _problem(409, str(exc)) from None
        return listener_status()

    @v1.post("/listener/stop", response_model=m.ListenerStatus, tags=["listening"])
    async def listener_stop(_body: m.Empty) -> m.ListenerStatus:
        """End the utterance now, like releasing the talk button."""
        ctx.commands.release("api")
        return listener_status()

    @v1.get("/listener/status", response_model=m.ListenerStatus, tags=["listening"])
    async def listener_get() -> m.ListenerStatus:
        return listener_status()

    @v1.post("/mute", response_model=m.Muted, tags=["listening"])
    async def mute(_body: m.Empty) -> m.Muted:
        """Stop listening (e.g. during a meeting); the robot still speaks when asked to."""
        return m.Muted(muted=ctx.commands.set_muted(True, "api"))

    @v1.post("/unmute", response_model=m.Muted, tags=["listening"])
    async def unmute(_body: m.Empty) -> m.Muted:
        return m.Muted(muted=ctx.commands.set_muted(False, "api"))

    @v1.post("/volume", response_model=m.Volume, tags=["audio"], responses={409: {"model": m.Problem}})
    async def volume(body: m.VolumeRequest) -> m.Volume:
        """Change the output gain now (PATCH /config audio.volume makes it permanent)."""
        sink = ctx.appliance.sink
        if not hasattr(sink, "volume"):
            raise _problem(409, f"the {getattr(sink, 'name', 'current')} speaker has no volume control")
        sink.volume = body.volume
        return m.Volume(volume=body.volume)

    # --- speaking, faces, animations ----------------------------------------------------------------------

    def check_text(text: str) -> str:
        text = text.strip()
        if not text:
            raise _invalid(["body", "text"], "text is blank")
        if len(text) > ctx.limits.max_say_chars:
            raise _invalid(["body", "text"], f"text is {len(text)} characters; the limit is {ctx.limits.max_say_chars}")
        return text

    def need_running(name: str) -> None:
        if not ctx.service_running(name):
            raise _problem(503, f"the {name} subsystem is not running")

    def submit(text: str, interrupt: bool) -> m.SayAccepted:
        need_running("conversation")
        try:
            job = ctx.speaker.submit(text, interrupt=interrupt, source="api")
        except QueueFull as exc:
            raise _problem(429, f"say queue is full: {exc}") from None
        return m.SayAccepted(id=job.id, position=ctx.speaker.position(job), interrupt=interrupt)

    busy: dict[int | str, dict[str, Any]] = {429: {"model": m.Problem}, 503: {"model": m.Problem}}

    @v1.post("/say", response_model=m.SayAccepted, status_code=202, tags=["speech"], responses=busy)
    async def say(body: m.SayRequest) -> m.SayAccepted:
        """Speak a line; queued behind the running turn unless ``interrupt``. Face/animation start with it."""
        text = check_text(body.text)
        check_names(ctx, face=body.face, animation=body.animation)
        wanted = (("face", body.face), ("animation", body.animation))
        tags = "".join(f"[{kind}:{value}]" for kind, value in wanted if value)
        return submit(f"{tags} {text}" if tags else text, body.interrupt)

    @v1.post("/perform", response_model=m.Performed, status_code=202, tags=["speech"], responses=busy)
    async def perform(body: m.PerformRequest) -> m.Performed:
        """Show a face and start an animation now, and say a line (all optional, at least one)."""
        if body.text is None and body.face is None and body.animation is None:
            raise _invalid(["body"], "give at least one of text, face, animation")
        text = check_text(body.text) if body.text is not None else None
        check_names(ctx, face=body.face, animation=body.animation)
        accepted = submit(text, body.interrupt) if text is not None else None
        if body.face:
            ctx.bus.publish(FaceRequested(body.face, body.face_duration))
        if body.animation:
            ctx.bus.publish(AnimationRequested(body.animation, body.animation_duration))
        return m.Performed(face=body.face, animation=body.animation, say=accepted)

    @v1.post("/face", response_model=m.Shown, tags=["body"])
    async def face(body: m.FaceRequest) -> m.Shown:
        check_names(ctx, face=body.name, face_loc=("body", "name"))
        ctx.bus.publish(FaceRequested(body.name, body.duration))
        return m.Shown(name=body.name)

    @v1.post("/animation", response_model=m.Shown, tags=["body"])
    async def animation(body: m.AnimationRequest) -> m.Shown:
        check_names(ctx, animation=body.name, animation_loc=("body", "name"))
        ctx.bus.publish(AnimationRequested(body.name, body.duration))
        return m.Shown(name=body.name)

    @v1.get(
        "/face.png",
        response_class=Response,
        tags=["body"],
        responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def face_image() -> Response:
        faces = ctx.appliance.faces
        render = getattr(faces, "render_png", None)
        data = render() if callable(render) else None
        if data is None:
            data = face_png(ctx.face())
        return Response(data, media_type="image/png", headers={"cache-control": "no-store"})

    # --- conversation -------------------------------------------------------------------------------------

    @v1.post(
        "/conversation",
        tags=["conversation"],
        responses={200: SSE, 409: {"model": m.Problem}, 503: {"model": m.Problem}},
    )
    async def conversation(body: m.ConversationRequest) -> EventStream:
        """Say something to the robot as if spoken; the reply streams back as it is spoken.

        Events: ``turn`` (turn_id, brain), ``heard``, ``chunk`` (text, voice_text, tags, optional audio as
        base64 WAV), ``speaking`` (sentence index now playing), ``finished`` (outcome, spoken, timings).
        """
        text = check_text(body.text)
        need_running("conversation")
        conv = ctx.appliance.conversation
        running = conv.current is not None and not conv.current.done.is_set()
        if running and not body.interrupt:
            raise _problem(409, "a turn is running; send interrupt=true to replace it")
        if not slots.take():
            raise _problem(503, "too many open streams", {"Retry-After": "5"})

        async def produce(out: trio.MemorySendChannel[tuple[str, Any]]) -> None:
            await _converse(ctx, text, body.audio, out)

        return EventStream(produce, slots, buffer=ctx.limits.sse_buffer, heartbeat=ctx.limits.sse_heartbeat)

    @v1.post("/turn/cancel", response_model=m.Cancelled, tags=["conversation"])
    async def cancel(_body: m.Empty) -> m.Cancelled:
        """Barge in: stop the running turn (speech stops within a block)."""
        return m.Cancelled(cancelled=await ctx.commands.cancel("api"))

    # --- histories ----------------------------------------------------------------------------------------

    def current_id() -> str:
        return ctx.appliance.conversation.history.conversation_id

    first_history = {"history_id": "$response.body#/histories/0/id"}
    history_links = {
        "GetFirstHistory": {"operationRef": "#/paths/~1v1~1histories~1{history_id}/get", "parameters": first_history},
        "DeleteFirstHistory": {
            "operationRef": "#/paths/~1v1~1histories~1{history_id}/delete",
            "parameters": first_history,
        },
    }

    @v1.get(
        "/histories",
        response_model=m.Histories,
        tags=["histories"],
        responses={200: {"description": "stored conversations, newest first", "links": history_links}},
    )
    async def histories() -> m.Histories:
        now = current_id()
        rows = [m.HistorySummary(**row, current=row["id"] == now) for row in ctx.store.summaries()]
        return m.Histories(histories=rows)

    @v1.get(
        "/histories/{history_id}", response_model=m.History, tags=["histories"], responses={404: {"model": m.Problem}}
    )
    async def history(history_id: HistoryId) -> m.History:
        data = ctx.store.get(history_id)
        if data is None:
            raise _problem(404, f"no conversation {history_id}")
        return m.History(**data, current=history_id == current_id())

    @v1.delete(
        "/histories/{history_id}",
        status_code=204,
        response_class=Response,
        tags=["histories"],
        responses={404: {"model": m.Problem}},
    )
    async def delete_history(history_id: HistoryId) -> Response:
        """Forget a conversation; forgetting the current one also clears what the robot remembers of it."""
        if not await ctx.store.delete(history_id):
            raise _problem(404, f"no conversation {history_id}")
        if history_id == current_id():
            ctx.appliance.conversation.history.reset()
        return Response(status_code=204)

    # --- configuration ------------------------------------------------------------------------------------

    @v1.get("/config", response_model=dict[str, Any], tags=["config"])
    async def get_config() -> dict[str, Any]:
        """The running configuration; secrets appear as ``**********``."""
        return ctx.config.redacted()

    @v1.patch("/config", response_model=m.ConfigPatched, tags=["config"], responses={409: {"model": m.Problem}})
    async def patch_config(patch: Annotated[dict[str, Any], Body(min_length=1, json_schema_extra=PATCH_SCHEMA)]) -> Any:
        """Change settings (JSON Merge Patch: ``null`` resets a setting to its default).

        Validated like a fresh start; written atomically, the old file kept as ``<file>.prev``; then only the
        subsystems the change touches are restarted. A bad patch changes nothing and returns 422 with the
        paths at fault. Secrets, the endpoints credentials go to (``base_url``, ``url``, ``region``) and code
        (commands, hooks) cannot be set here; nor can anything that would make the next start fail.
        """
        path = ctx.config_path
        if path is None:
            raise _problem(409, "the appliance runs on built-in defaults; start it with --config FILE to edit")
        async with ctx.config_lock:
            try:
                new_data, new = await trio.to_thread.run_sync(plan_patch, path, patch, ctx.environ)
            except PatchRejected as exc:
                detail = [{"loc": loc.split("."), "msg": msg, "type": "config"} for loc, msg in exc.problems]
                return JSONResponse({"detail": detail}, status_code=422)
            old = ctx.config
            try:
                previous = await trio.to_thread.run_sync(write_config, path, new_data)
            except OSError as exc:
                raise _problem(409, f"cannot write {path}: {exc.strerror or exc}") from None
            changes = changed_sections(old, new)
            log.info("configuration changed: %s", ", ".join(sorted(changes)) or "nothing")
            result = await ctx.apply(old, new, changes)
        return m.ConfigPatched(
            applied=result.applied,
            restarted=result.restarted,
            restart_required=result.restart_required,
            previous_file=str(previous),
            config=new.redacted(),
        )

    # --- devices, events, metrics -------------------------------------------------------------------------

    @v1.get("/devices", response_model=m.Devices, tags=["audio"])
    async def devices() -> m.Devices:
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

    @v1.get("/events", tags=["status"], responses={200: SSE, 503: {"model": m.Problem}})
    async def events() -> EventStream:
        """State, face, turn, service and error events as they happen (``overflow`` then close if too slow)."""
        if not slots.take():
            raise _problem(503, "too many open streams", {"Retry-After": "5"})

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

        return EventStream(produce, slots, buffer=ctx.limits.sse_buffer, heartbeat=ctx.limits.sse_heartbeat)

    @v1.get(
        "/metrics",
        response_class=Response,
        tags=["status"],
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        """Prometheus text format: turns, stage latencies, errors, restarts, audio overruns."""
        return Response(_metrics_text(ctx, slots), media_type="text/plain; version=0.0.4; charset=utf-8")

    plain_openapi = app.openapi

    def openapi_with_sse() -> dict[str, Any]:
        # FastAPI describes a streaming response class as one string; each SSE event is the unit here.
        document = plain_openapi()
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                for response in operation.get("responses", {}).values():
                    stream = response.get("content", {}).get("text/event-stream")
                    if stream is not None and "itemSchema" in stream:
                        stream.pop("schema", None)
                        response["content"].pop("application/json", None)
        return document

    app.openapi = openapi_with_sse  # type: ignore[method-assign]

    # The schema and its docs page need the token too: only /v1/health is public.
    docs = APIRouter(dependencies=[Depends(authorize)], include_in_schema=False)

    @docs.get("/openapi.json")
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @docs.get("/docs")
    async def swagger() -> Response:
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    app.include_router(public)
    app.include_router(v1)
    app.include_router(docs)
    return app


# --- helpers ---------------------------------------------------------------------------------------------


def _allowed_methods(app: Any, scope: Scope) -> set[str]:
    """The methods the schema lists for this path (the docs pages take GET)."""
    patterns = getattr(app.state, "method_patterns", None)
    if patterns is None:
        import re

        patterns = app.state.method_patterns = [
            (
                re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"),
                {method.upper() for method in operations},
            )
            for template, operations in app.openapi().get("paths", {}).items()
        ] + [(re.compile(r"^/(openapi\.json|docs)$"), {"GET"})]
    methods: set[str] = set()
    for pattern, allowed in patterns:
        if pattern.match(scope["path"]):
            methods |= allowed
    return methods


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _brain_status(brain: Any) -> m.BrainStatus:
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


async def _converse(
    ctx: ControlContext, text: str, with_audio: bool, out: trio.MemorySendChannel[tuple[str, Any]]
) -> None:
    conv = ctx.appliance.conversation
    overflow = False

    def emit(kind: str, data: Any) -> None:
        nonlocal overflow
        if overflow:
            return
        try:
            out.send_nowait((kind, data))
        except trio.WouldBlock:
            overflow = True  # the client is too slow; the robot keeps talking, the stream ends
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            overflow = True

    def tap(item: Any) -> None:
        if isinstance(item, Transcript):
            emit("heard", {"text": item.text})
        elif isinstance(item, ReplyChunk):
            chunk: dict[str, Any] = {
                "text": item.text,
                "voice_text": item.voice_text,
                "tags": [{"name": t.name, "value": t.value, "attributes": dict(t.attributes)} for t in item.tags],
            }
            if with_audio and isinstance(item.audio, AudioClip):  # TappedBrain hands streamed speech over whole
                chunk["audio"] = base64.b64encode(encode_wav(item.audio)).decode("ascii")
            emit("chunk", chunk)

    stream_failed = trio.CancelScope()

    def tap_failed(exc: Exception) -> None:
        emit("error", {"message": f"this stream failed ({type(exc).__name__}); the turn goes on"})
        stream_failed.cancel()

    brain = TappedBrain(conv.brain, tap, copy_audio=with_audio, on_error=tap_failed)
    with ctx.bus.subscribe(SentenceStarted, TurnFinished, name="control-conversation", size=256) as sub:
        try:
            active = await conv.start_turn(Utterance(text=text, source="api"), brain=brain)
        except RuntimeError as exc:
            emit("error", {"message": str(exc)})
            return
        emit("turn", {"turn_id": active.turn_id, "brain": conv.brain.name})
        with stream_failed:
            async for event in sub:
                if overflow:
                    with trio.move_on_after(1):
                        await out.send(("overflow", {"message": "client too slow; the turn goes on"}))
                    return
                if isinstance(event, SentenceStarted) and event.turn_id == active.turn_id:
                    emit("speaking", {"index": event.index, "text": event.text})
                elif isinstance(event, TurnFinished) and event.turn_id == active.turn_id:
                    emit(
                        "finished",
                        {
                            "outcome": event.outcome,
                            "spoken": event.spoken,
                            "error": event.error,
                            "timings": dataclasses.asdict(event.timings),
                        },
                    )
                    return


def _metrics_text(ctx: ControlContext, slots: Slots) -> str:
    app_ = ctx.appliance
    metrics = ctx.metrics
    out = Exposition()
    out.family("appliance_up", "gauge", "1 while the appliance runs", [({"version": __version__}, 1)])
    out.family("appliance_uptime_seconds", "gauge", "seconds since start", [({}, round(ctx.uptime(), 3))])
    out.family(
        "appliance_state",
        "gauge",
        "1 for the current state",
        [({"state": s.value}, int(ctx.state() is s)) for s in State],
    )
    out.family("appliance_muted", "gauge", "1 while the microphone is muted", [({}, int(ctx.muted()))])
    out.family(
        "appliance_turns_total",
        "counter",
        "finished turns by outcome",
        [({"outcome": k}, v) for k, v in sorted(metrics.turns.items())] or [({"outcome": "done"}, 0)],
    )
    out.histogram(
        "appliance_turn_stage_seconds", "time from the end of the utterance to each stage", "stage", metrics.stages
    )
    out.family(
        "appliance_errors_total",
        "counter",
        "errors by where they happened",
        [({"where": k}, v) for k, v in sorted(metrics.errors.items())] or [({"where": "turn"}, 0)],
    )
    records = app_.supervisor.records
    out.family(
        "appliance_subsystem_restarts_total",
        "counter",
        "restarts after a failure",
        [({"subsystem": n}, r.restarts) for n, r in records.items()],
    )
    out.family(
        "appliance_subsystem_reconfigured_total",
        "counter",
        "restarts for a configuration change",
        [({"subsystem": n}, getattr(r.service, "reconfigured", 0)) for n, r in records.items()],
    )
    out.family(
        "appliance_subsystem_up",
        "gauge",
        "1 while the subsystem runs",
        [({"subsystem": n}, int(r.status == "running")) for n, r in records.items()],
    )
    capture = ctx.restartables.get("capture")
    queue = getattr(getattr(capture, "inner", None), "queue", None)
    xruns = [({"direction": "capture"}, getattr(queue, "dropped", 0))]
    for direction, part in (("capture_device", app_.source), ("playback", app_.sink)):
        count = getattr(part, "xruns", None)
        if isinstance(count, int):
            xruns.append(({"direction": direction}, count))
    out.family("appliance_audio_xruns_total", "counter", "audio blocks lost (overruns/underruns)", xruns)
    echo = _echo_status(app_)
    out.family(
        "appliance_echo_cancel_active",
        "gauge",
        "1 while the echo canceller runs",
        [({"backend": echo.backend}, int(echo.backend != "off"))],
    )
    if echo.erle_db is not None:
        out.family(
            "appliance_echo_erle_db",
            "gauge",
            "echo reduction (ERLE) over the last seconds of robot speech",
            [({}, echo.erle_db)],
        )
    if echo.delay_ms is not None:
        out.family(
            "appliance_echo_delay_ms",
            "gauge",
            "delay from the speaker's block to its echo at the mic",
            [({}, echo.delay_ms)],
        )
    out.family("appliance_bus_events_total", "counter", "events published", [({}, app_.bus.published)])
    out.family(
        "appliance_bus_dropped_total", "counter", "events dropped for slow subscribers", [({}, app_.bus.dropped)]
    )
    out.family("appliance_control_streams", "gauge", "open event streams", [({}, slots.open)])
    out.family(
        "appliance_control_responses_total",
        "counter",
        "API answers by HTTP status, refusals included",
        [({"code": str(code)}, n) for code, n in sorted(metrics.responses.items())] or [({"code": "200"}, 0)],
    )
    return out.text()


def _echo_status(app_: Any) -> m.EchoStatus:
    canceller = getattr(app_, "echo", None)
    if canceller is None:
        return m.EchoStatus(backend="off")
    stats = canceller.stats()
    return m.EchoStatus(
        backend=stats.backend,
        erle_db=_finite(stats.erle_db),
        delay_ms=_finite(stats.delay_ms),
        drift_ppm=stats.drift_ppm,
        resyncs=stats.resyncs,
        noise_suppression=stats.noise_suppression,
    )


STREAMING_PATHS = ("/v1/events", "/v1/conversation")
PUBLIC_PATHS = ("/v1/health",)
BODY_METHODS = ("POST", "PUT", "PATCH")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class Guard:
    """Pure ASGI middleware in front of every route: who may ask, from where, with what body, and when.

    In order, before any route runs and before a byte of body is read:

    * ``/v1/health`` is answered at once: no token, no queue, so a monitor sees the robot however busy it is.
    * The caller is authenticated from the headers (bearer token, or a loopback Host without one), so a
      stranger cannot hold anything open by sending headers and then no body.
    * A state-changing request must come from the robot's own origin (``Origin``/``Sec-Fetch-Site``) and,
      if it may carry a body, say ``Content-Type: application/json``, empty bodies included: a web page in
      the owner's browser can only send simple cross-site requests (form or text/plain, no custom
      headers), and those are refused here.
    * The body is read within ``body_timeout`` and capped at ``max_body`` bytes, outside the turnstile.

    Then the turnstile keeps the API from starving audio: the appliance runs on one event loop, and Trio
    runs every ready task before it looks at timers again, so fifty requests handled at once would make an
    audio block wait for all of them. At most ``concurrency`` requests are handled at a time; the rest wait
    parked (costing nothing) in arrival order. Event streams are exempt (they are capped by count and mostly
    idle).
    """

    def __init__(self, app: ASGIApp, ctx: ControlContext, concurrency: int = 2) -> None:
        self.app = app
        self.ctx = ctx
        self.turnstile = trio.Semaphore(concurrency)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._counted(send)
        if scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._unauthenticated(headers)
        if refusal is None and scope["method"] not in _allowed_methods(self.app, scope):
            # A 404 or 405 (the schema lists every route that takes a body): answered without the body.
            await self.app(scope, _replay(b"", receive), send)
            return
        refusal = refusal or self._unsafe(scope["method"], headers)
        if refusal is not None:
            await _reply(send, *refusal)
            return
        if scope["method"] in BODY_METHODS:
            body = await self._read_body(headers, receive, send)
            if body is None:
                return
            receive = _replay(body, receive)
        if scope["path"] in STREAMING_PATHS:
            await self.app(scope, receive, send)
            return
        async with self.turnstile:
            await self.app(scope, receive, send)

    def _counted(self, send: Send) -> Send:
        """``send`` that counts each answer's status for /v1/metrics (refusals made here included)."""
        responses = self.ctx.metrics.responses

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                responses[int(message["status"])] += 1
            await send(message)

        return counted

    def _unauthenticated(self, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
        token = self.ctx.token
        if token is None:
            if not host_header_is_loopback(headers.get("host")):
                return 403, "without a token only loopback Host names are accepted", {}
        else:
            scheme, _, presented = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not presented.strip():
                return 401, "missing bearer token", {"www-authenticate": "Bearer"}
            if not token_matches(presented.strip(), token):
                return 403, "wrong token", {}
        return None

    def _unsafe(self, method: str, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
        if method in SAFE_METHODS:
            return None
        if not same_origin(headers):
            return 403, "cross-site request refused: send it from the robot's own origin or without a browser", {}
        if method in BODY_METHODS and not _is_json(headers.get("content-type", "")):
            return 415, "send the body as application/json (an empty body is {})", {}
        return None

    async def _read_body(self, headers: dict[str, str], receive: Receive, send: Send) -> bytes | None:
        limits = self.ctx.limits
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            await _reply(send, 413, f"request body over {limits.max_body_bytes} bytes")
            return None
        body = bytearray()
        with trio.move_on_after(limits.body_timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                body += message.get("body", b"")
                if len(body) > limits.max_body_bytes:
                    await _reply(send, 413, f"request body over {limits.max_body_bytes} bytes")
                    return None
                if not message.get("more_body", False):
                    return bytes(body)
        await _reply(
            send, 408, f"the request body did not arrive within {limits.body_timeout:g} s", {"connection": "close"}
        )
        return None


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def same_origin(headers: dict[str, str]) -> bool:
    """False for a request a browser sent on behalf of another site (what a CSRF attempt looks like)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is None:
        return True  # not sent by a browser's cross-site fetch (browsers always send Origin there)
    parts = urlsplit(origin.strip())
    host = headers.get("host", "").strip().lower()
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == host


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    import json

    payload = json.dumps({"detail": detail}).encode()
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
