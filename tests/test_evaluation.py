"""``appliance eval``: scenarios through the real cloud brain code against fake OpenAI-compatible servers on
127.0.0.1, one playing the robot's model and one the judge; hostile scenario files refused by name."""

from __future__ import annotations

import io
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.config import load_config
from appliance.evaluation.command import EXIT_FAILED, EXIT_INPUT, EXIT_OK, run_eval
from appliance.evaluation.judge import parse_verdict
from tests.fakes.cloud import FakeCloud

PASSING = '{"pass": true, "reason": "it greets the user"}'


class Clouds:
    def __init__(self, robot: FakeCloud, judge: FakeCloud) -> None:
        self.robot, self.judge = robot, judge

    def chat_bodies(self, cloud: FakeCloud) -> list[Any]:
        return cloud.bodies("/v1/chat/completions")


@pytest.fixture
def clouds() -> Iterator[Clouds]:
    robot = FakeCloud(reply="[face:joy] Hello Ken! Nice to meet you.")
    judge = FakeCloud(reply=PASSING)
    ready: queue.Queue[Any] = queue.Queue()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(robot.serve)
            await nursery.start(judge.serve)
            ready.put((trio.lowlevel.current_trio_token(), nursery.cancel_scope))

    thread = threading.Thread(target=trio.run, args=(main,), name="fake-clouds", daemon=True)
    thread.start()
    token, scope = ready.get(timeout=30)
    try:
        yield Clouds(robot, judge)
    finally:
        token.run_sync_soon(scope.cancel)
        thread.join(timeout=30)


def robot_config(tmp_path: Path, clouds: Clouds, prompt: str = "You are Robo.") -> Any:
    path = tmp_path / "robot.toml"
    path.write_text(
        f'[conversation]\nsystem_prompt = "{prompt}"\n[llm]\nbase_url = "{clouds.robot.url}/v1"\n'
        f'[stt]\nbase_url = "{clouds.robot.url}/v1"\n[tts]\nprovider = "espeak"\n'
    )
    return load_config(path, environ={})


def scenario_file(tmp_path: Path, clouds: Clouds, body: str, name: str = "scenarios.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'[judge]\nbase_url = "{clouds.judge.url}/v1"\n\n' + body)
    return path


GREETING = """
[[scenario]]
name = "greeting"
goal = "The robot learns the user's name"

[[scenario.turns]]
input = "Hi, I am Ken"
criteria = "Greets the user by name"

[[scenario.turns]]
input = "What is my name?"
criteria = "Says the name is Ken"
"""


def evaluate(config: Any, path: Path, **options: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = run_eval(config, path, out, **options)
    return code, out.getvalue()


def test_a_scenario_runs_through_the_brain_and_the_judge_sees_each_reply(tmp_path: Path, clouds: Clouds) -> None:
    config = robot_config(tmp_path, clouds)
    code, printed = evaluate(config, scenario_file(tmp_path, clouds, GREETING))
    assert code == EXIT_OK, printed
    assert "PASS  greeting" in printed and "1 passed, 0 failed" in printed
    robot_requests = clouds.chat_bodies(clouds.robot)
    assert len(robot_requests) == 2
    second = robot_requests[1]["messages"]
    # The second turn carries the first exchange, the reply with its tags as the robot wrote it.
    assert second[0] == {"role": "system", "content": "You are Robo."}
    assert [m["content"] for m in second[1:]] == [
        "Hi, I am Ken",
        "[face:joy] Hello Ken! Nice to meet you.",
        "What is my name?",
    ]
    judged = [body["messages"][-1]["content"] for body in clouds.chat_bodies(clouds.judge)]
    assert len(judged) == 3  # two turns and the goal
    assert "Greets the user by name" in judged[0] and "[face:joy] Hello Ken!" in judged[0]
    assert "The robot learns the user's name" in judged[2] and "User: What is my name?" in judged[2]
    saved = json.loads((tmp_path / "scenarios.toml.results.json").read_text())
    turns = saved["scenarios"]["greeting"]["turns"]
    assert turns[0]["reply"] == "[face:joy] Hello Ken! Nice to meet you."
    assert turns[0]["verdicts"] == [{"passed": True, "reason": "it greets the user", "by": "judge"}]
    # No speech was synthesized or transcribed: evaluation is on words.
    assert not clouds.robot.bodies("/v1/audio/speech") and not clouds.robot.bodies("/v1/audio/transcriptions")


def test_a_failing_verdict_fails_the_run_with_the_reason(tmp_path: Path, clouds: Clouds) -> None:
    clouds.judge.reply = '{"pass": false, "reason": "never says the name"}'
    code, printed = evaluate(robot_config(tmp_path, clouds), scenario_file(tmp_path, clouds, GREETING))
    assert code == EXIT_FAILED
    assert "FAIL  greeting" in printed and "never says the name" in printed and "0 passed, 1 failed" in printed


def test_a_judge_that_gives_no_verdict_is_a_failure_not_a_pass(tmp_path: Path, clouds: Clouds) -> None:
    clouds.judge.reply = "Sure! The robot did great."
    code, printed = evaluate(robot_config(tmp_path, clouds), scenario_file(tmp_path, clouds, GREETING))
    assert code == EXIT_FAILED
    assert "the judge gave no verdict: Sure! The robot did great." in printed


def test_a_failing_judge_service_is_a_failure(tmp_path: Path, clouds: Clouds) -> None:
    clouds.judge.llm.status = 503
    code, printed = evaluate(robot_config(tmp_path, clouds), scenario_file(tmp_path, clouds, GREETING))
    assert code == EXIT_FAILED
    assert "the judge failed" in printed


def test_a_failing_brain_ends_the_scenario_as_an_error(tmp_path: Path, clouds: Clouds) -> None:
    clouds.robot.llm.status = 401
    code, printed = evaluate(robot_config(tmp_path, clouds), scenario_file(tmp_path, clouds, GREETING))
    assert code == EXIT_FAILED
    assert "ERROR turn 1: the brain failed" in printed
    assert not clouds.chat_bodies(clouds.judge)


def test_scenarios_already_run_are_skipped_until_asked_or_the_prompt_changes(tmp_path: Path, clouds: Clouds) -> None:
    path = scenario_file(tmp_path, clouds, GREETING)
    config = robot_config(tmp_path, clouds)
    assert evaluate(config, path)[0] == EXIT_OK
    code, printed = evaluate(config, path)
    assert code == EXIT_OK and "not run again" in printed
    assert len(clouds.chat_bodies(clouds.robot)) == 2  # nothing new asked
    assert evaluate(config, path, rerun=True)[0] == EXIT_OK
    assert len(clouds.chat_bodies(clouds.robot)) == 4
    changed = robot_config(tmp_path, clouds, prompt="You are Grumpy.")
    code, printed = evaluate(changed, path)
    assert "not run again" not in printed
    assert len(clouds.chat_bodies(clouds.robot)) == 6


def test_an_earlier_failure_still_fails_the_run_when_skipped(tmp_path: Path, clouds: Clouds) -> None:
    path = scenario_file(tmp_path, clouds, GREETING)
    config = robot_config(tmp_path, clouds)
    clouds.judge.reply = '{"pass": false, "reason": "no"}'
    assert evaluate(config, path)[0] == EXIT_FAILED
    clouds.judge.reply = PASSING
    code, printed = evaluate(config, path)
    assert code == EXIT_FAILED and "FAIL  greeting (earlier result" in printed


def test_python_checks_judge_replies_without_a_judge_model(tmp_path: Path, clouds: Clouds) -> None:
    (tmp_path / "robot_checks.py").write_text(
        "def shows_joy(reply, said):\n    return '[face:joy]' in reply\n"
        "def names_ken(reply, said):\n    return 'Ken' in reply, 'the reply names Ken'\n"
        "def too_long(exchanges):\n    return (len(exchanges) < 2, f'{len(exchanges)} exchanges')\n"
        "async def broken(reply, said):\n    raise KeyError('oops')\n"
    )
    body = """
[[scenario]]
name = "logic"
goal_check = "robot_checks:too_long"
[[scenario.turns]]
input = "Hi"
check = "robot_checks:shows_joy"
[[scenario.turns]]
input = "Again"
check = "robot_checks:names_ken"
[[scenario.turns]]
input = "Once more"
check = "robot_checks:broken"
"""
    code, printed = evaluate(robot_config(tmp_path, clouds), scenario_file(tmp_path, clouds, body))
    assert code == EXIT_FAILED
    assert "PASS (check) robot_checks:shows_joy passed" in printed
    assert "PASS (check) the reply names Ken" in printed
    assert "FAIL (check) robot_checks:broken raised KeyError" in printed
    assert "FAIL (check) 3 exchanges" in printed
    assert not clouds.chat_bodies(clouds.judge)  # nothing needed the judge model


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_json_and_yaml_scenarios(tmp_path: Path, clouds: Clouds, suffix: str) -> None:
    data = {
        "judge": {"base_url": f"{clouds.judge.url}/v1"},
        "scenario": [{"name": "hello", "turns": [{"input": "Hello", "criteria": "Greets"}]}],
    }
    path = tmp_path / f"s{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        import yaml

        path.write_text(yaml.safe_dump(data))
    code, printed = evaluate(robot_config(tmp_path, clouds), path)
    assert code == EXIT_OK, printed
    assert "PASS  hello" in printed


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        ("[[scenario]\nname=", "s.toml", "not valid TOML"),
        ('{"scenario": [', "s.json", "not valid JSON"),
        ("scenario: [a, {", "s.yaml", "not valid YAML"),
        ("[[scenario]]\nname = 'x'\n", "s.toml", "scenario.0.turns: Field required"),
        ("[[scenario]]\nname = 'x'\nturns = []\n", "s.toml", "scenario.0.turns: List should have at least 1 item"),
        (
            "[[scenario]]\nname = 'x'\n[[scenario.turns]]\ninput = 5\n",
            "s.toml",
            "scenario.0.turns.0.input: Input should be a valid string",
        ),
        ("[[scenario]]\nname = 'x'\n[[scenario.turns]]\ninput = '  '\n", "s.toml", "input is blank"),
        (
            "[[scenario]]\nname = 'x'\nmood = 1\n[[scenario.turns]]\ninput = 'hi'\n",
            "s.toml",
            "scenario.0.mood: Extra inputs",
        ),
        (
            "[[scenario]]\nname = 'x'\n[[scenario.turns]]\ninput = 'a'\n[[scenario]]\nname = 'x'\n[[scenario.turns]]\ninput = 'b'\n",
            "s.toml",
            "two scenarios are named 'x'",
        ),
        (
            "[[scenario]]\nname = 'x'\n[[scenario.turns]]\ninput = 'hi'\ncheck = 'no_such_module:f'\n",
            "s.toml",
            "x: turn 1 check: check 'no_such_module:f': cannot import",
        ),
        ("[[scenario]]\nname = 'x'\n[[scenario.turns]]\ninput = 'hi'\ncheck = 'nocolon'\n", "s.toml", "must look like"),
        ("scenario = 1", "s.ini", "unknown kind of file '.ini'"),
        (
            "[judge]\ntimeout = -1\n[[scenario]]\nname = 'x'\n[[scenario.turns]]\ninput = 'hi'\n",
            "s.toml",
            "judge.timeout",
        ),
        ("[" * 100_000, "s.json", "not valid JSON"),
    ],
)
def test_bad_scenario_files_are_refused_naming_what_is_wrong(
    tmp_path: Path, clouds: Clouds, content: str, name: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    code, printed = evaluate(robot_config(tmp_path, clouds), path)
    assert code == EXIT_INPUT
    assert expected in printed, printed
    assert not clouds.chat_bodies(clouds.robot)


def test_huge_and_binary_files_are_refused_before_parsing(tmp_path: Path, clouds: Clouds) -> None:
    config = robot_config(tmp_path, clouds)
    huge = tmp_path / "huge.toml"
    huge.write_text("# " + "x" * 2_000_000)
    code, printed = evaluate(config, huge)
    assert code == EXIT_INPUT and "at most 1000000" in printed
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\xff\xfe\x00RIFF")
    code, printed = evaluate(config, binary)
    assert code == EXIT_INPUT and "cannot read as UTF-8" in printed
    code, printed = evaluate(config, tmp_path / "missing.toml")
    assert code == EXIT_INPUT and "cannot read" in printed


def test_a_damaged_results_file_is_reported_not_overwritten(tmp_path: Path, clouds: Clouds) -> None:
    path = scenario_file(tmp_path, clouds, GREETING)
    results = tmp_path / "scenarios.toml.results.json"
    results.write_text("{not json")
    code, printed = evaluate(robot_config(tmp_path, clouds), path)
    assert code == EXIT_INPUT and "cannot read earlier results" in printed
    assert results.read_text() == "{not json"


def test_only_runs_the_named_scenarios_and_refuses_unknown_names(tmp_path: Path, clouds: Clouds) -> None:
    body = GREETING + '\n[[scenario]]\nname = "other"\n[[scenario.turns]]\ninput = "Bye"\n'
    path = scenario_file(tmp_path, clouds, body)
    config = robot_config(tmp_path, clouds)
    code, printed = evaluate(config, path, only=["other"])
    assert code == EXIT_OK and "greeting" not in printed and "PASS  other" in printed
    code, printed = evaluate(config, path, only=["nope"])
    assert code == EXIT_INPUT and "no scenario named 'nope'" in printed


def test_a_judge_without_a_key_is_refused_up_front(
    tmp_path: Path, clouds: Clouds, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "s.toml"
    path.write_text('[judge]\nbase_url = ""\nprovider = "openai"\n' + GREETING)
    code, printed = evaluate(robot_config(tmp_path, clouds), path)
    assert code == EXIT_INPUT and "needs an API key" in printed and "OPENAI_API_KEY" in printed


@pytest.mark.parametrize(
    ("text", "passed", "by"),
    [
        ('{"pass": true, "reason": "ok"}', True, "judge"),
        ('Here you go:\n```json\n{"pass": false, "reason": "rude"}\n```', False, "judge"),
        ('{"passed": true}', True, "judge"),
        ('{"pass": "yes"}', False, "error"),
        ("[1, 2]", False, "error"),
        ("", False, "error"),
        ("{" * 10_000, False, "error"),
    ],
)
def test_verdict_parsing(text: str, passed: bool, by: str) -> None:
    verdict = parse_verdict(text)
    assert (verdict.passed, verdict.by) == (passed, by)
