"""The ESPHome server against aioesphomeapi, the client library Home Assistant uses, on 127.0.0.1."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from appliance.events import FaceRequested, MuteRequested
from tests.esphome_helpers import KEY, OTHER_KEY, HomeAssistant, esphome_appliance, home_assistant


async def test_device_info_announces_a_voice_satellite() -> None:
    from aioesphomeapi.model import VoiceAssistantFeature as F

    async with esphome_appliance() as (_app, _log, server, _sink), home_assistant(server.port) as ha:
        info = await ha.run(lambda: ha.client.device_info())
        assert info.name == "robot"
        assert info.uses_password is False
        flags = info.voice_assistant_feature_flags
        for flag in (F.VOICE_ASSISTANT, F.SPEAKER, F.API_AUDIO, F.ANNOUNCE, F.START_CONVERSATION, F.TIMERS):
            assert flags & flag, flag
        assert info.api_encryption_supported is False
        assert ha.client.api_version.major == 1


async def test_entities_are_listed_and_driven() -> None:
    from aioesphomeapi import (
        LightInfo,
        MediaPlayerInfo,
        NumberInfo,
        SelectInfo,
        SwitchInfo,
    )

    async with esphome_appliance() as (app, log, server, sink), home_assistant(server.port) as ha:
        entities, _services = await ha.run(lambda: ha.client.list_entities_services())
        by_id = {e.object_id: e for e in entities}
        assert isinstance(by_id["mute"], SwitchInfo)
        assert isinstance(by_id["volume"], NumberInfo) and by_id["volume"].max_value == 100
        assert isinstance(by_id["face"], SelectInfo) and "joy" in by_id["face"].options
        assert isinstance(by_id["status_led"], LightInfo)
        player = by_id["media_player"]
        assert isinstance(player, MediaPlayerInfo)
        assert any(f.format == "wav" for f in player.supported_formats)

        states: dict[int, object] = {}
        await ha.call_soon(lambda: ha.client.subscribe_states(lambda s: states.__setitem__(s.key, s)))
        with trio.fail_after(10):
            while len(states) < 5:
                await trio.sleep(0.02)
        mute_key = by_id["mute"].key
        assert states[mute_key].state is False

        await ha.call_soon(lambda: ha.client.switch_command(mute_key, True))
        await log.wait_for(MuteRequested, lambda e: e.muted and e.source == "home_assistant")
        with trio.fail_after(10):
            while not states[mute_key].state:
                await trio.sleep(0.02)

        await ha.call_soon(lambda: ha.client.number_command(by_id["volume"].key, 40))
        with trio.fail_after(10):
            while abs(sink.volume - 0.4) > 1e-6:
                await trio.sleep(0.02)

        await ha.call_soon(lambda: ha.client.select_command(by_id["face"].key, "joy"))
        await log.wait_for(FaceRequested, lambda e: e.name == "joy")
        await ha.call_soon(lambda: ha.client.select_command(by_id["face"].key, "no-such-face"))

        await ha.call_soon(lambda: ha.client.light_command(by_id["status_led"].key, state=True, brightness=0.25))
        with trio.fail_after(10):
            while server.robot.led_brightness != 0.25:
                await trio.sleep(0.02)

        from aioesphomeapi import MediaPlayerCommand

        await ha.call_soon(lambda: ha.client.media_player_command(player.key, volume=0.7))
        with trio.fail_after(10):
            while abs(sink.volume - 0.7) > 1e-6:
                await trio.sleep(0.02)
        await ha.call_soon(lambda: ha.client.media_player_command(player.key, command=MediaPlayerCommand.MUTE))
        with trio.fail_after(10):
            while sink.volume != 0.0 or not states[player.key].muted:
                await trio.sleep(0.02)
        await ha.call_soon(lambda: ha.client.media_player_command(player.key, command=MediaPlayerCommand.UNMUTE))
        with trio.fail_after(10):
            while abs(sink.volume - 0.7) > 1e-6:
                await trio.sleep(0.02)


async def test_encrypted_connection_works() -> None:
    async with (
        esphome_appliance(encryption_key=KEY) as (_app, _log, server, _sink),
        home_assistant(server.port, KEY) as ha,
    ):
        info = await ha.run(lambda: ha.client.device_info())
        assert info.name == "robot" and info.api_encryption_supported is True
        await ha.run(lambda: ha.client.list_entities_services())


async def test_wrong_key_and_wrong_mode_are_refused_and_the_robot_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    from aioesphomeapi.core import (
        APIConnectionError,
        InvalidEncryptionKeyAPIError,
    )

    async with esphome_appliance(encryption_key=KEY) as (app, _log, server, _sink):
        wrong = HomeAssistant(server.port, OTHER_KEY)
        with pytest.raises(InvalidEncryptionKeyAPIError):
            await wrong.connect()
        await wrong.close()
        plain = HomeAssistant(server.port, None)
        with pytest.raises(APIConnectionError):
            await plain.connect()
        await plain.close()
        with trio.fail_after(10):
            while "requires encryption" not in caplog.text:
                await trio.sleep(0.02)
        assert "differs from ours" in caplog.text
        assert KEY not in caplog.text and OTHER_KEY not in caplog.text
        async with home_assistant(server.port, KEY) as ha:  # the right key still works afterwards
            assert (await ha.run(lambda: ha.client.device_info())).name == "robot"
        assert app.supervisor.records["esphome"].status == "running"

    async with esphome_appliance() as (_app, _log, server, _sink):
        encrypted = HomeAssistant(server.port, KEY)
        with pytest.raises(APIConnectionError):
            await encrypted.connect()
        await encrypted.close()


async def test_a_volume_change_elsewhere_reaches_home_assistant(autojump_clock: trio.testing.MockClock) -> None:
    """The control API sets the sink's gain without an event; the server notices within a few seconds."""
    async with esphome_appliance() as (app, _log, server, sink):

        class Conn:
            states = True
            sent: list[object] = []

            def send(self, *messages: object) -> None:
                self.sent.extend(messages)

        conn = Conn()
        server.connections.add(conn)
        sink.volume = 0.3
        await trio.sleep(6)
        server.connections.discard(conn)
        volumes = [m.state for m in conn.sent if type(m).__name__ == "NumberStateResponse"]
        assert volumes == [30]
