"""``appliance status | mute | say | ask | config set | histories ...`` against the real API."""

from __future__ import annotations

import socket
import tomllib

import pytest
import trio

from appliance.cli import main
from appliance.control.client import parse_assignments
from tests.fakes.control_robot import Robot, running_robot


@pytest.fixture
async def robot(tmp_path):
    async with running_robot(tmp_path) as robot:
        yield robot


async def cli(robot: Robot, *args: str) -> int:
    argv = ["-c", str(robot.config_path), *args[:1], "--url", robot.url, *args[1:]]
    return await trio.to_thread.run_sync(main, argv)


async def test_status_and_mute(robot: Robot, capsys):
    assert await cli(robot, "status") == 0
    out = capsys.readouterr().out
    assert "brain offline" in out and "conversation" in out
    assert await cli(robot, "mute") == 0
    assert capsys.readouterr().out.strip() == "muted"
    assert await cli(robot, "listen", "status", "--json") == 0
    assert '"muted": true' in capsys.readouterr().out
    assert await cli(robot, "unmute") == 0


async def test_say_goes_through_the_running_appliance(robot: Robot, capsys):
    from appliance.events import TurnFinished

    with robot.appliance.bus.subscribe(TurnFinished, name="test") as sub:
        assert await cli(robot, "say", "Hello from the terminal.", "--face", "joy") == 0
        finished = await sub.receive.receive()
    assert "saying" in capsys.readouterr().out
    assert isinstance(finished, TurnFinished) and finished.spoken == "[face:joy] Hello from the terminal."


async def test_say_local_writes_a_wav_without_the_api(robot: Robot, tmp_path):
    out = tmp_path / "line.wav"
    assert await cli(robot, "say", "Hi.", "--local", "--output", str(out)) == 0
    assert out.read_bytes()[:4] == b"RIFF"
    assert robot.appliance.conversation.turns == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_say_falls_back_to_local_when_nothing_runs(robot: Robot, capsys):
    url = f"http://127.0.0.1:{_free_port()}"
    argv = ["-c", str(robot.config_path), "say", "Hi.", "--url", url]
    assert await trio.to_thread.run_sync(main, argv) == 0
    assert "speaking locally" in capsys.readouterr().err
    refused = ["-c", str(robot.config_path), "say", "Hi.", "--api", "--url", url]
    assert await trio.to_thread.run_sync(main, refused) == 1
    assert await trio.to_thread.run_sync(main, ["-c", str(robot.config_path), "status", "--url", url]) == 1


async def test_ask_config_histories_and_wrong_token(robot: Robot, capsys):
    assert await cli(robot, "ask", "Anyone home?") == 0
    assert "not connected" in capsys.readouterr().out
    assert await cli(robot, "config", "set", "listening.silence_duration=0.9") == 0
    assert "restarted: listening" in capsys.readouterr().out
    assert tomllib.loads(robot.config_path.read_text())["listening"]["silence_duration"] == 0.9
    assert await cli(robot, "config", "set", "listening.silence_duration=-2") == 1
    assert "listening.silence_duration" in capsys.readouterr().err
    with trio.fail_after(5):
        while not robot.appliance.control.ctx.store.summaries():
            await trio.sleep(0.02)
    assert await cli(robot, "histories") == 0
    assert "Anyone home?" in capsys.readouterr().out
    assert await cli(robot, "status", "--token", "not-the-right-token-at-all") == 1
    assert "403" in capsys.readouterr().err


def test_parse_assignments():
    assert parse_assignments(["a.b=1", "a.c=text", "d=null", "e=[1, 2]"]) == {
        "a": {"b": 1, "c": "text"},
        "d": None,
        "e": [1, 2],
    }
    with pytest.raises(ValueError):
        parse_assignments(["nothing"])


async def test_an_unknown_face_is_refused_with_the_known_ones(robot: Robot, capsys):
    assert await cli(robot, "face", "grumpy") == 1
    err = capsys.readouterr().err
    assert "unknown face 'grumpy'" in err and "sorrow" in err
    assert await cli(robot, "animation", "moonwalk") == 1
    assert "known animations:" in capsys.readouterr().err
    assert await cli(robot, "face", "joy") == 0


async def test_listen_and_listen_status_agree(robot: Robot, capsys):
    assert await cli(robot, "listen") == 0
    started = capsys.readouterr().out.strip()
    assert await cli(robot, "listen", "status") == 0
    assert capsys.readouterr().out.strip() == started
    assert started.startswith("listening")


def test_ask_says_why_a_turn_failed_and_events_read_as_lines():
    from appliance.control.cli import _event_text, _finished_text

    failed = {
        "outcome": "failed",
        "error": "openai-stt: cannot connect: [Errno -2] Name or service not known",
        "timings": {"first_audio": None},
    }
    assert _finished_text(failed) == "(failed: openai-stt: cannot connect: [Errno -2] Name or service not known)"
    assert _finished_text({"outcome": "done", "error": None, "timings": {"first_audio": 0.8}}) == (
        "(done, first audio 0.8 s)"
    )
    line = _event_text("state_changed", {"old": "idle", "new": "listening", "reason": None})
    assert line.endswith("state_changed    old=idle new=listening")
    assert _event_text("heard", {"text": "hello there"}).endswith('heard            text="hello there"')


def test_histories_count_turns_in_english():
    from appliance.control.cli import _histories_text

    rows = [
        {"id": "a", "turns": 1, "current": False, "preview": "hi"},
        {"id": "b", "turns": 2, "current": True, "preview": "yo"},
    ]
    assert _histories_text({"histories": rows}).splitlines() == ["a    1 turn  hi", "b    2 turns (current)  yo"]


async def test_say_tells_when_nothing_was_heard(robot: Robot, capsys):
    assert await cli(robot, "say", "Hi.", "--local") == 0  # the robot's audio.output is "simulated"
    assert "audio.output is simulated: nothing was heard" in capsys.readouterr().err
    assert await cli(robot, "say", "Hi.") == 0  # through the running appliance, which has no sound card either
    assert "nothing will be heard" in capsys.readouterr().err
