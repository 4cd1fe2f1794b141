from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import trio.testing


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """Virtual time: sleeps and timeouts finish instantly. Only for tests without real sockets."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture(scope="session")
def speech_wav() -> Path:
    """A real spoken phrase (espeak-ng, 16 kHz mono), shipped with the package."""
    return Path(str(resources.files("appliance.assets").joinpath("hello.wav")))
