"""``appliance serve``: the WebSocket server and, when ``[server] http_port`` is set, the HTTP API beside it."""

from __future__ import annotations

import gc
import logging
import signal
from typing import Any

import trio

from appliance.groups import single_error

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


def settle_heap() -> None:
    """Freeze what start-up left on the heap: modules, schemas, the providers and their pools live as long as the
    process, and every full garbage collection walked all of them (about 85,000 objects: a 50-60 ms pause on the
    2-core test machine, once every few dozen turns, under every turn in flight). Later full collections walk
    only what the turns left since. The one collection here runs before the first robot is served."""
    gc.collect()
    gc.freeze()
    log.debug("froze %d objects left by start-up", gc.get_freeze_count())
