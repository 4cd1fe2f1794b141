"""Schemathesis with every check and every phase (the stateful one included) against the real control API
with a token configured, bounded in examples (fixed seed) so it stays well under a minute. 0 failures.

Runs the ``schemathesis`` command line as it would be run by hand, against the robot served on 127.0.0.1
by a helper thread; ``tests/schemathesis.toml`` holds the one documented exception (a schema-valid config
patch may be refused with 422, since it is checked like a fresh start).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.control_robot import TOKEN
from tests.test_control_fuzz import robot_in_thread

CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 10


def run_schemathesis(url: str, max_examples: int = MAX_EXAMPLES) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{url}/openapi.json",
        "-H",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(max_examples),
        "--seed",
        "15",
        "--request-timeout",
        "20",
        "--exclude-path",
        "/v1/events",  # an endless stream by design; test_control_api covers it
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_schemathesis_all_checks_and_the_stateful_phase(tmp_path):
    with robot_in_thread(tmp_path) as url:
        result = run_schemathesis(url)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated and generated[1] == generated[2] and int(generated[1]) >= 300, report[-2000:]
    assert "Stateful" in report and "failures" not in report.split("SUMMARY")[-1]
