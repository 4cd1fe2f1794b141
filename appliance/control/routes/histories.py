"""Stored conversations: list, read, forget."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from fastapi.responses import Response

from appliance.control import models as m
from appliance.control.context import ControlContext
from appliance.control.histories import ID_PATTERN
from appliance.control.routes.common import Ctx, problem, protected

router = protected()

HistoryId = Annotated[str, Path(pattern=ID_PATTERN, description="conversation id")]

_FIRST = {"history_id": "$response.body#/histories/0/id"}
_LINKS = {
    "GetFirstHistory": {"operationRef": "#/paths/~1v1~1histories~1{history_id}/get", "parameters": _FIRST},
    "DeleteFirstHistory": {"operationRef": "#/paths/~1v1~1histories~1{history_id}/delete", "parameters": _FIRST},
}


def _current_id(ctx: ControlContext) -> str:
    return ctx.appliance.conversation.history.conversation_id


@router.get(
    "/histories",
    response_model=m.Histories,
    tags=["histories"],
    responses={200: {"description": "stored conversations, newest first", "links": _LINKS}},
)
async def histories(ctx: Ctx) -> m.Histories:
    now = _current_id(ctx)
    rows = [m.HistorySummary(**row, current=row["id"] == now) for row in ctx.store.summaries()]
    return m.Histories(histories=rows)


@router.get(
    "/histories/{history_id}", response_model=m.History, tags=["histories"], responses={404: {"model": m.Problem}}
)
async def history(history_id: HistoryId, ctx: Ctx) -> m.History:
    data = ctx.store.get(history_id)
    if data is None:
        raise problem(404, f"no conversation {history_id}")
    return m.History(**data, current=history_id == _current_id(ctx))


@router.delete(
    "/histories/{history_id}",
    status_code=204,
    response_class=Response,
    tags=["histories"],
    responses={404: {"model": m.Problem}},
)
async def delete_history(history_id: HistoryId, ctx: Ctx) -> Response:
    """Forget a conversation; forgetting the current one also clears what the robot remembers of it."""
    if not await ctx.store.delete(history_id):
        raise problem(404, f"no conversation {history_id}")
    if history_id == _current_id(ctx):
        ctx.appliance.conversation.history.reset()
    return Response(status_code=204)
