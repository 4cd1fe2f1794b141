"""The failover wiring in the whole appliance: config → FailoverBrain → the remote server answers the mic."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from appliance.app import build_appliance
from appliance.assembly.brains import brain_plan
from appliance.brains.failover import FailoverBrain
from appliance.brains.remote import RemoteBrain
from appliance.cli import main
from appliance.config import AppConfig, load_config
from appliance.events import BrainChanged, TurnFinished
from tests.fakes.aiavatar import FakeAvatarServer
from tests.fakes.tcp import refused_port


def make_config(url: str, brains: list[str]) -> AppConfig:
    return AppConfig.model_validate(
        {
            "audio": {"input": "simulated", "output": "simulated", "simulated_speech_after": 1.0},
            "gpio": {"status_led": None, "button": None},
            "conversation": {"brains": brains},
            "remote": {"url": url, "api_key": "secret-key", "heartbeat_interval": 1.0, "heartbeat_timeout": 1.0},
        }
    )


# These run on the real clock: they talk over real sockets, and a virtual clock that jumps ahead whenever
# every task waits on the network would fire timeouts the real world never would.


async def test_simulated_mic_is_answered_by_the_remote(nursery: trio.Nursery) -> None:
    server = FakeAvatarServer()
    await nursery.start(server.run)
    appliance = build_appliance(make_config(server.url, ["remote", "offline"]), handle_signals=False)
    assert isinstance(appliance.brain, FailoverBrain)
    assert "brains" in appliance.supervisor.records
    with appliance.bus.subscribe(TurnFinished, BrainChanged, name="test") as sub:
        async with trio.open_nursery() as inner:
            await inner.start(appliance.run)
            events = []
            with trio.fail_after(30):
                async for event in sub:
                    events.append(event)
                    if isinstance(event, TurnFinished):
                        break
            inner.cancel_scope.cancel()
    finished = events[-1]
    assert finished.outcome == "done"
    assert finished.spoken.startswith("[face:joy] You said: spoken words of")
    assert any(isinstance(e, BrainChanged) and e.brain == "remote" for e in events)
    assert server.requests and "audio" in server.requests[0]
    assert server.violations == []


async def test_dead_remote_falls_to_offline_in_the_appliance(nursery: trio.Nursery) -> None:
    appliance = build_appliance(
        make_config(f"ws://127.0.0.1:{refused_port()}/ws", ["remote", "offline"]), handle_signals=False
    )
    with appliance.bus.subscribe(TurnFinished, name="test") as sub:
        async with trio.open_nursery() as inner:
            await inner.start(appliance.run)
            with trio.fail_after(30):
                finished = await sub.receive.receive()
            inner.cancel_scope.cancel()
    assert finished.outcome == "done" and "connected to the internet" in finished.spoken


def test_single_remote_brain_and_plans() -> None:
    config = make_config("ws://127.0.0.1:1/ws", [])
    assert brain_plan(config) == ["offline"]
    single = config.model_copy(update={"conversation": config.conversation.model_copy(update={"brain": "remote"})})
    appliance = build_appliance(single, handle_signals=False)
    assert isinstance(appliance.brain, RemoteBrain) and "brains" in appliance.supervisor.records


def test_config_errors_name_the_setting(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "a.toml"
    path.write_text('[conversation]\nbrains = ["cloud", "remote", "cloud"]\n[remote]\nurl = "http://pc/ws"\n')
    assert main(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert "conversation.brains" in err and "remote.url" in err and "ws://" in err
    path.write_text('[conversation]\nbrains = ["remote", "offline"]\n')
    assert main(["--config", str(path), "check-config"]) == 0
    assert "brain=remote,offline" in capsys.readouterr().out
    assert load_config(path, {}).conversation.brains == ("remote", "offline")


def test_remote_key_from_systemd_credentials(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "remote_api_key").write_text("from-credentials\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = make_config("ws://127.0.0.1:1/ws", ["remote", "offline"])
    config = config.model_copy(update={"remote": config.remote.model_copy(update={"api_key": None})})
    appliance = build_appliance(config, handle_signals=False)
    remote_brain = appliance.brain.members[0].brain
    assert isinstance(remote_brain, RemoteBrain) and remote_brain._api_key == "from-credentials"
