"""The running configuration: read it (secrets hidden), change it (validated, written atomically, applied)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import trio
from fastapi import Body
from fastapi.responses import JSONResponse

from appliance.control import models as m
from appliance.control.config_patch import PatchRejected, changed_sections, plan_patch, write_config
from appliance.control.routes.common import Ctx, problem, protected

log = logging.getLogger(__name__)

router = protected()


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


@router.get("/config", response_model=dict[str, Any], tags=["config"])
async def get_config(ctx: Ctx) -> dict[str, Any]:
    """The running configuration; secrets appear as ``**********``."""
    return ctx.config.redacted()


@router.patch("/config", response_model=m.ConfigPatched, tags=["config"], responses={409: {"model": m.Problem}})
async def patch_config(
    patch: Annotated[dict[str, Any], Body(min_length=1, json_schema_extra=PATCH_SCHEMA)], ctx: Ctx
) -> Any:
    """Change settings (JSON Merge Patch: ``null`` resets a setting to its default).

    Validated like a fresh start; written atomically, the old file kept as ``<file>.prev``; then only the
    subsystems the change touches are restarted. A bad patch changes nothing and returns 422 with the
    paths at fault. Secrets, the endpoints credentials go to (``base_url``, ``url``, ``region``) and code
    (commands, hooks) cannot be set here; nor can anything that would make the next start fail.
    """
    path = ctx.config_path
    if path is None:
        raise problem(409, "the appliance runs on built-in defaults; start it with --config FILE to edit")
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
            raise problem(409, f"cannot write {path}: {exc.strerror or exc}") from None
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
