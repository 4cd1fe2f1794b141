"""Between PortAudio's audio thread and Trio, for one input stream.

The callback runs on the audio thread: it only appends the raw bytes and, unless a hand-over is already
scheduled (or the listener is relaxed and the watch loop hands over instead, or busy and fewer than
``busy_blocks`` device blocks wait), asks Trio to ``flush``. ``flush`` runs on the Trio side: it resamples if
needed and cuts the audio into the blocks the listener takes.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import trio

from appliance.audio.base import BlockQueue
from appliance.audio.echo_reference import callback_time


class InputBridge:
    def __init__(self, source: Any, queue: BlockQueue, resampler: Any, token: trio.lowlevel.TrioToken) -> None:
        self.source = source  # its block_size and max_pending; its overflow and drop counters
        self.queue = queue
        self.resampler = resampler
        self.token = token
        self.arrived: deque[bytes] = deque()  # appended by the audio thread, emptied by Trio
        self.woken = False  # a flush is already scheduled (written by both threads; GIL-atomic)
        # The watch loop is on its relaxed timer and will collect the audio: set by the loop, read here.
        self.watch_hands_over = False
        self.last_arrival = trio.current_time()  # -1: "just now", stamped by Trio (the audio thread has no clock)
        self.leftover = np.zeros(0, dtype=np.int16)
        self.finished = trio.Event()
        # When the stream's first sample was captured (time.monotonic; the audio thread sets it once), for the
        # echo canceller's pairing by the devices' clocks; told to the queue before its first block.
        self.started_at: float | None = None
        self._told = False

    def flush(self) -> None:
        self.woken = False
        if self.last_arrival < 0:
            self.last_arrival = trio.current_time()  # audio came since the last flush: stamped on Trio's clock
        block_size = self.source.block_size
        if not self._told and self.started_at is not None:
            self._told = True
            tell = getattr(self.queue, "captured_at", None)  # only the echo canceller's queue wants it
            if tell is not None:
                tell(self.started_at)
        while self.arrived:
            block = np.frombuffer(self.arrived.popleft(), dtype=np.int16)
            if self.resampler is not None:
                block = self.resampler.resample_chunk(block)
            samples = np.concatenate([self.leftover, block]) if self.leftover.size else block
            usable = len(samples) - len(samples) % block_size
            for start in range(0, usable, block_size):
                self.queue.put_nowait(samples[start : start + block_size])
            self.leftover = samples[usable:].copy()

    def callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        if status.input_overflow:
            self.source.overflows += 1
        if len(self.arrived) >= self.source.max_pending:
            self.source.dropped_callbacks += 1  # never block the audio thread; drop newest here, queue drops oldest
            return
        if self.started_at is None and not self.arrived and not self._told:
            self.started_at = callback_time(time_info, "inputBufferAdcTime")
        self.arrived.append(bytes(indata))
        self.last_arrival = -1.0
        if (self.queue.relaxed and self.watch_hands_over) or self.woken:
            return
        if self.queue.busy and len(self.arrived) < self.source.busy_blocks:
            return
        self.woken = True
        try:
            self.token.run_sync_soon(self.flush)
        except trio.RunFinishedError:
            pass

    def on_finished(self) -> None:
        try:
            self.token.run_sync_soon(self.finished.set)
        except trio.RunFinishedError:
            pass
