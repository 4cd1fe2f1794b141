"""Property-based fuzzing of the whole control API from its own OpenAPI schema (schemathesis).

Every operation gets valid and invalid requests (bounded count, fixed derandomized seed so a failure
reproduces); the checks are: no 5xx, the status code is one the schema declares, the content type and the
body match the schema. The server is the real one, run by Trio in a helper thread so schemathesis (which is
synchronous) can drive it over 127.0.0.1.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis

# Imported now, at collection: schemathesis loads this lazily, and a later first import inside a test can
# hit CPython 3.11's 'AST constructor recursion depth mismatch' once another test has run into (and
# handled) a RecursionError, as the hostile deep-JSON tests do on purpose.
import schemathesis.specs.openapi.schemas
import trio
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fakes.control_robot import TOKEN, running_robot

EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6}
SKIPPED = {("GET", "/v1/events")}  # an endless stream by design; covered in test_control_api
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@contextmanager
def robot_in_thread(directory: Path) -> Iterator[str]:
    started = threading.Event()
    state: dict[str, object] = {}

    async def serve() -> None:
        with trio.CancelScope() as scope:
            state["scope"] = scope
            state["token"] = trio.lowlevel.current_trio_token()
            async with running_robot(directory) as robot:
                state["url"] = robot.url
                started.set()
                await trio.sleep_forever()

    def main() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # reported to the test below
            state["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=main, name="fuzzed-robot", daemon=True)
    thread.start()
    started.wait(30)
    if "url" not in state:
        raise RuntimeError(f"the robot did not start: {state.get('error')!r}")
    try:
        yield str(state["url"])
    finally:
        token = state["token"]
        token.run_sync_soon(state["scope"].cancel)  # type: ignore[attr-defined]
        thread.join(10)
    assert not thread.is_alive(), "the robot did not shut down"
    assert "error" not in state, state.get("error")


@pytest.mark.slow
def test_fuzz_the_api_from_its_schema(tmp_path):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with robot_in_thread(tmp_path) as url:
        document = httpx.get(f"{url}/openapi.json", headers=headers).json()
        schema = schemathesis.openapi.from_dict(document)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20
        tried = 0
        for operation in operations:
            if (operation.method.upper(), operation.path) in SKIPPED:
                continue
            for mode, count in EXAMPLES.items():

                @settings(
                    max_examples=count,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                    phases=[hypothesis.Phase.generate],
                )
                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                def check(case: schemathesis.Case) -> None:
                    response = case.call(base_url=url, headers=headers, timeout=20)
                    case.validate_response(response, checks=CHECKS)

                try:
                    check()
                except hypothesis.errors.Unsatisfiable:
                    # An operation without parameters or body has no invalid request to make.
                    assert mode is GenerationMode.NEGATIVE, operation.label
                    continue
                tried += 1
        assert tried >= len(operations) - len(SKIPPED) + 8  # every operation, and the negative side of many
