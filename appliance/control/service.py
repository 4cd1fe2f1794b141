"""The control API as a supervised subsystem.

``run`` binds and listens on the port before it reports ready, so the supervisor's READY means the API
accepts connections; the web framework is loaded right after, off the voice's critical path, and answers
what queued up meanwhile. The history recorder, metrics and the say queue run beside the
server in the same nursery; cancelling the service (shutdown) closes every open stream at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from appliance.auth import ControlSetupError, check_bind, resolve_token
from appliance.control.context import ControlContext
from appliance.control.histories import HistoryStore
from appliance.control.metrics import Metrics
from appliance.conversation.journal import TurnJournal
from appliance.files import default_state_dir
from appliance.settings_base import ConfigError
from appliance.speaker import Speaker
from appliance.web_serving import hypercorn_config, listen_socket, url_port

if TYPE_CHECKING:
    from appliance.assembly.parts import Appliance

log = logging.getLogger(__name__)


class ControlService:
    name = "control"

    def __init__(self, context: ControlContext) -> None:
        self.ctx = context
        self.urls: list[str] = []
        self.port: int | None = None
        self.bound = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        ctx = self.ctx
        cfg = ctx.limits = ctx.appliance.config.control
        ctx.slots.limit = cfg.max_sse_clients
        ctx.token = resolve_token(cfg, ctx.environ)  # a token file may have changed since the last start
        check_bind(cfg, ctx.token)
        conv_history = ctx.appliance.conversation.history
        fd, url = listen_socket(cfg.host, cfg.port)
        urls = [url]
        handed_over = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(ctx.store.record, ctx.bus, lambda: conv_history.conversation_id))
                await nursery.start(partial(ctx.metrics.follow, ctx.bus))
                await nursery.start(ctx.speaker.run)
                self.urls = urls
                self.port = url_port(url)
                self.bound.set()
                log.info("control API on %s%s", ", ".join(urls), "" if ctx.token else " (no token: loopback only)")
                # The port is bound and listening: READY may go out now. The web framework takes most of a
                # second to import, which the voice must not wait for; connections made meanwhile wait in
                # the kernel's accept queue and are answered as soon as it is loaded.
                task_status.started(urls)
                await trio.to_thread.run_sync(_import_web_stack)
                from hypercorn.trio import serve

                from appliance.control.api import Guard, create_app

                api = create_app(ctx)
                # The schema is pure Python work: build it once off the event loop, not on the first
                # /openapi.json request in the middle of someone's sentence.
                await trio.to_thread.run_sync(api.openapi)
                handed_over = True
                app: Any = Guard(api, ctx)  # an ASGI callable; hypercorn's type names its own scope classes
                await nursery.start(partial(serve, app, hypercorn_config(fd, "appliance.control.server", log)))
        finally:
            if not handed_over:
                os.close(fd)


def _import_web_stack() -> None:
    import hypercorn.trio  # noqa: F401

    import appliance.control.api  # noqa: F401  (fastapi, starlette, pydantic models of every route)


def add_control(
    appliance: Appliance, config_path: Path | None = None, environ: Mapping[str, str] | None = None
) -> ControlService | None:
    """Register the control API with the appliance's supervisor (when enabled); checks the bind first."""
    config = appliance.config.control
    if not config.enabled:
        return None
    try:
        token = resolve_token(config, environ)
        check_bind(config, token)
    except ControlSetupError as exc:
        raise ConfigError("control", [str(exc)]) from None
    state_dir = config.state_dir or default_state_dir(environ)
    store = HistoryStore(state_dir / "histories", config.max_histories)
    # The conversation writes each turn ahead into the journal the store reads back.
    journal = TurnJournal(store.directory)
    appliance.conversation.journal = journal
    appliance.supervisor.add(journal, required=False)
    speaker = Speaker(appliance.conversation, appliance.bus, config.max_queued_says)
    ctx = ControlContext(appliance, store, Metrics(), speaker, token, config_path, environ)
    service = ControlService(ctx)
    appliance.supervisor.add(service, required=False)
    appliance.control = service
    return service
