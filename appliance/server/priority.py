"""First audio first: with many robots talking at once, every reply's first sentence goes ahead of the others'
later sentences.

One process answers every robot; when ten replies arrive together the tenth robot's first sentence would wait
behind the other nine robots' second and third sentences (their speech requests, their answers, their frames),
though only the first sentence is waited for: the later ones have a whole sentence of playback to arrive in.
So a reply's later sentences are requested only once this process has nothing else ready to run (the other
replies' work up to their first sentence's request went first), and at most ``LATER_SENTENCE_WAIT`` later, so
a server that is never idle still speaks them in time. Alone, a robot's later sentences wait a scheduler pass.
"""

from __future__ import annotations

import trio
import trio.testing

LATER_SENTENCE_WAIT = 0.05  # s: well inside the first sentence's playback (a second or more)


async def after_first_sentences() -> None:
    """Wait until every task that is ready to run has run, or ``LATER_SENTENCE_WAIT``.

    ``wait_all_tasks_blocked`` is the scheduler's own notion of idle (it lives in ``trio.testing`` but is a plain
    scheduler primitive): nothing in the run queue and no I/O ready. Every later sentence waiting then goes at
    once, after whatever had become ready before it.
    """
    with trio.move_on_after(LATER_SENTENCE_WAIT):
        await trio.testing.wait_all_tasks_blocked()
