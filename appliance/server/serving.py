"""``appliance serve``: the WebSocket server and, when ``[server] http_port`` is set, the HTTP API beside it."""

from __future__ import annotations

import logging
import signal
from typing import Any

import trio

from appliance.groups import single_error
from appliance.heap import settle_heap

log = logging.getLogger(__name__)


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
