"""``make interop-test``: the real AIAvatarKit 0.9.2 (its own venv under .cache/, made by ``make interop-venv``).

Not part of ``make test`` (testpaths = tests): a missing peer is an error here, never a silent skip.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from peer import PEER_PYTHON  # noqa: E402

from tests.fakes.cloud import FakeCloud  # noqa: E402

# The reply the fake cloud's LLM streams: three sentences, a face and an animation, as a character would.
REPLY = "[face:joy] Nice to meet you. I am a test robot! [animation:wave] Have a nice day."
SENTENCES = ["Nice to meet you.", "I am a test robot!", "Have a nice day."]


def pytest_sessionstart(session: pytest.Session) -> None:
    if not PEER_PYTHON.exists():
        raise pytest.UsageError(f"{PEER_PYTHON} is missing: run `make interop-venv` (or `make interop-test`)")


@pytest.fixture
async def cloud(nursery: trio.Nursery) -> AsyncIterator[FakeCloud]:
    fake = FakeCloud(reply=REPLY, seconds_per_char=0.004)
    await nursery.start(fake.serve)
    yield fake
