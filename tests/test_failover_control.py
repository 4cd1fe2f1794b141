"""Changing the brain list through the control API (PATCH /v1/config) and what its status shows."""

from __future__ import annotations

import trio

from appliance.brains.failover import FailoverBrain
from appliance.events import TurnFinished
from appliance.turns import Utterance
from tests.fakes.aiavatar import FakeAvatarServer
from tests.fakes.control_robot import running_robot


async def test_patching_brains_builds_a_failover_brain_that_answers(tmp_path, nursery: trio.Nursery) -> None:  # type: ignore[no-untyped-def]
    server = FakeAvatarServer(api_key=None)
    await nursery.start(server.run)
    extra = f'[remote]\nurl = "{server.url}"\n'  # the section follows [conversation] in the robot's file
    async with running_robot(tmp_path, extra="[failover]\nopen_initial = 1.0\n" + extra) as robot:
        async with robot.client() as api:
            response = await api.patch("/v1/config", json={"conversation": {"brains": ["remote", "offline"]}})
            assert response.status_code == 200, response.text
            assert response.json()["restarted"] == ["brain"]
            brain = robot.appliance.conversation.brain
            assert isinstance(brain, FailoverBrain)
            with robot.appliance.bus.subscribe(TurnFinished, name="test") as sub:
                await robot.appliance.conversation.start_turn(Utterance(text="hello there"))
                with trio.fail_after(10):
                    finished = await sub.receive.receive()
            status = (await api.get("/v1/status")).json()
    assert finished.outcome == "done" and "You said: hello there." in finished.spoken
    assert status["brain"]["name"] == "remote" and status["brain"]["healthy"] is True
    assert status["brain"]["detail"]["active"] == "remote"
    assert server.violations == []
