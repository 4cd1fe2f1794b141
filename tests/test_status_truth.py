"""The status tells the truth: a brain nobody has heard from is 'unknown', one that failed below the
threshold is 'degraded', and the turn's record names the brain whose reply was actually spoken."""

from __future__ import annotations

import trio
import trio.testing

from appliance.brains.failover import FailoverBrain
from appliance.control.routes.status import brain_status as _brain_status
from appliance.errors import ProviderUnavailable
from appliance.events import TurnFinished
from tests.fakes.cloud import fake_cloud
from tests.harness import cloud_config, running_appliance
from tests.remote_helpers import StubBrain, collect, request
from tests.test_failover_brain import CONFIG


class SlowProbe(StubBrain):
    async def probe(self) -> None:
        await trio.sleep(1)
        await super().probe()


async def test_health_is_unknown_until_told_then_degraded_then_unhealthy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cloud = SlowProbe("cloud")
    remote = StubBrain("remote")
    brain = FailoverBrain([cloud, remote], CONFIG)  # failure_threshold 2
    status = _brain_status(brain)
    assert status.healthy is None and status.detail["cloud"] == "unknown"  # before anything ran
    async with trio.open_nursery() as nursery:
        await nursery.start(brain.run)
        assert _brain_status(brain).healthy is None  # the first probe is on its way
        await trio.sleep(2)
        status = _brain_status(brain)
        assert status.healthy is True and status.detail["cloud"] == "healthy"
        cloud.fail = lambda: ProviderUnavailable("cloud", "HTTP 503")
        items = await collect(brain, request(turn="a"))
        assert items[-1].brain == "remote"  # the chunks say who wrote them
        status = _brain_status(brain)
        assert status.healthy is False and status.detail["cloud"] == "degraded" and status.detail["active"] == "remote"
        await collect(brain, request(turn="b"))
        assert _brain_status(brain).detail["cloud"] == "unhealthy"
        cloud.fail = None
        await trio.sleep(CONFIG.open_initial + 2)  # the background probe finds it back
        assert _brain_status(brain).healthy is True
        nursery.cancel_scope.cancel()


async def test_a_turn_answered_by_the_backup_is_recorded_as_the_backups() -> None:
    async with fake_cloud() as cloud:
        cloud.llm.status = 500
        config = cloud_config(cloud.url, conversation__brains=["cloud", "offline"])
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(request().utterance)
            done = await log.wait_for(TurnFinished)
    assert done.outcome == "done" and done.brain == "offline"
    assert done.conversation_id
