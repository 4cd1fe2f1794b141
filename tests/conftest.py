from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
import trio.testing


@pytest.fixture(autouse=True)
def _no_handler_outlives_its_test() -> Iterator[None]:
    """Tests that run the CLI in-process set logging up on pytest's captured stdout, which is closed after the
    test: a record logged later (livekit's FFI thread logs from its own thread) met a closed file, and logging
    printed "--- Logging error ---" into the run's output."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """Virtual time: sleeps and timeouts finish instantly. Only for tests without real sockets."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture(scope="session")
def speech_wav() -> Path:
    """A real spoken phrase (espeak-ng, 16 kHz mono), shipped with the package."""
    return Path(str(resources.files("appliance.assets").joinpath("hello.wav")))
