"""``appliance serve``: the WebSocket server and, when ``[server] http_port`` is set, the HTTP API beside it; in one
process, or in ``[server] workers`` processes on one port (``workers.py``)."""

from __future__ import annotations

import logging
import signal
import socket
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from appliance.groups import single_error
from appliance.heap import settle_heap

if TYPE_CHECKING:
    from appliance.server.fair_accept import Shares

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


async def serve_all_until_signalled(*servers: Any) -> None:
    """Run every server in one nursery until SIGTERM (systemd) or SIGINT (Ctrl-C); then close them all."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, single_error():
        async with trio.open_nursery() as nursery:
            for server in servers:
                await nursery.start(server.run)
            settle_heap()
            async for signum in signals:
                log.info("stopping (%s)", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def serve_command(config: Any, host: str | None, port: int | None, level: str | None) -> int:
    """``appliance serve [--host] [--port]``: an exit code."""
    from appliance.logs import setup_logging
    from appliance.server.avatar import check_bind
    from appliance.settings_base import ConfigError

    setup_logging(level or config.log.level)
    changes: dict[str, object] = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if config.server.api_key is None:
        import os

        from pydantic import SecretStr

        from appliance.settings.secrets import lookup_secret

        key = lookup_secret("", "server_api_key", os.environ)  # LoadCredential=server_api_key:...
        if key:
            changes["api_key"] = SecretStr(key)
        else:
            log.info("no server.api_key: only loopback clients may be served")
    server_config = config.server.model_copy(update=changes)
    try:
        check_bind(server_config)  # a non-loopback address without a key
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_CONFIG
    serve_one = partial(_serve_process, config, server_config)
    try:
        if server_config.workers == 1:
            return serve_one(0, None, None, None, None)
        from appliance.server.workers import run_workers

        return run_workers(
            server_config.workers, server_config.host, server_config.port, server_config.http_port, serve_one
        )
    except OSError as exc:
        ports = f"{server_config.port}" + (f" / http {server_config.http_port}" if server_config.http_port else "")
        print(f"cannot serve on {server_config.host}:{ports}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED


def _serve_process(
    config: Any,
    server_config: Any,
    index: int,
    ws: socket.socket | None,
    http: socket.socket | None,
    store: Path | None,
    shares: Shares | None,
) -> int:
    """One serving process (the only one, or worker ``index`` on the shared port): build, serve, exit."""
    from appliance.assembly.brains import serving_brain
    from appliance.server.avatar import AvatarServer
    from appliance.server.fair_accept import FairListener
    from appliance.server.histories import LocalHistories, SharedHistories
    from appliance.server.http_api import HttpAvatarServer
    from appliance.settings_base import ConfigError

    try:
        brain, tracing = serving_brain(config)  # each turn a trace when [tracing] is on
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_CONFIG
    limit = config.conversation.history_limit
    # One store for the WebSocket and the HTTP API: a conversation is its context_id's, whichever way it came.
    histories = SharedHistories(store, limit) if store is not None else LocalHistories(limit)
    listener = FairListener(ws, shares, index) if ws is not None and shares is not None else None
    servers: list[Any] = [
        AvatarServer(brain, server_config, history_limit=limit, histories=histories, listener=listener)
    ]
    if server_config.http_port is not None:  # the HTTP/SSE API beside it, same key, same brain
        servers.append(HttpAvatarServer(brain, server_config, history_limit=limit, histories=histories, listener=http))
    try:
        trio.run(serve_all_until_signalled, *servers)
    finally:
        histories.close()
        if tracing is not None:
            tracing.shutdown()  # the last turns' spans leave before the process does
    return EXIT_OK
