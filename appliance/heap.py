"""The start-up heap, settled once the process is up."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def settle_heap() -> None:
    """Freeze what start-up left on the heap: modules, schemas, the providers and their pools live as long as the
    process, and every full garbage collection walked all of them (about 85,000 objects: a 50-60 ms pause on the
    2-core test machine, once every few dozen turns, under every turn in flight). Later full collections walk
    only what came since. Called once everything has started, before the first turn."""
    gc.collect()
    gc.freeze()
    log.debug("froze %d objects left by start-up", gc.get_freeze_count())
