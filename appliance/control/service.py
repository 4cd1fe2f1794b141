"""The control API as a supervised subsystem.

``run`` binds and listens on the port before it reports ready, so the supervisor's READY means the API
accepts connections; the web framework is loaded right after, off the voice's critical path, and answers
what queued up meanwhile. The history recorder, metrics and the say queue run beside the
server in the same nursery; cancelling the service (shutdown) closes every open stream at once.
"""

from __future__ import annotations

import logging
import os
import socket
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
        fd, urls = listen_socket(cfg.host, cfg.port)
        handed_over = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(ctx.store.record, ctx.bus, lambda: conv_history.conversation_id))
                await nursery.start(partial(ctx.metrics.follow, ctx.bus))
                await nursery.start(ctx.speaker.run)
                self.urls = urls
                self.port = int(urls[0].rsplit(":", 1)[1])
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
                await nursery.start(partial(serve, app, _hypercorn_config(fd)))
        finally:
            if not handed_over:
                os.close(fd)


def listen_socket(host: str, port: int) -> tuple[int, list[str]]:
    """Bind and listen now; the file descriptor goes to hypercorn once it is loaded (``fd://``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        bound_host, bound_port = sock.getsockname()[:2]
    except OSError:
        sock.close()
        raise
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    return sock.detach(), [f"http://{shown}:{bound_port}"]


def _import_web_stack() -> None:
    import hypercorn.trio  # noqa: F401

    import appliance.control.api  # noqa: F401  (fastapi, starlette, pydantic models of every route)


def _hypercorn_config(fd: int):
    from hypercorn.config import Config

    hyper = Config()
    hyper.bind = [f"fd://{fd}"]
    hyper.accesslog = None
    server_log = logging.getLogger("appliance.control.server")
    server_log.setLevel(max(logging.WARNING, log.getEffectiveLevel()))  # its "Running on" repeats ours
    hyper.errorlog = server_log
    hyper.graceful_timeout = 0.5
    hyper.include_server_header = False
    hyper.keep_alive_timeout = 30
    return hyper


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
