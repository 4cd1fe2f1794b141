"""Avatar OSC: a UDP server on 127.0.0.1 receives the face and animation parameters in order."""

from __future__ import annotations

import socket
from typing import Any

import trio
from pythonosc.osc_message import OscMessage

from appliance.bus import EventBus
from appliance.events import AnimationRequested, FaceRequested, State, StateChanged
from appliance.hardware.faces import FaceService
from appliance.hardware.osc import OscService
from appliance.settings.hardware import OscConfig


class OscReceiver:
    """A real UDP socket on loopback that decodes what arrives."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.messages: list[tuple[str, Any]] = []
        self.at: list[float] = []

    async def bind(self) -> int:
        await self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    async def serve(self) -> None:
        while True:
            data = await self.sock.recv(65536)
            message = OscMessage(data)
            self.messages.append((message.address, message.params[0]))
            self.at.append(trio.current_time())

    async def wait_for(self, count: int) -> list[tuple[str, Any]]:
        with trio.fail_after(30):
            while len(self.messages) < count:
                await trio.sleep(0.01)
        return self.messages


async def start(nursery: trio.Nursery, **config: Any) -> tuple[EventBus, OscReceiver, OscService]:
    receiver = OscReceiver()
    port = await receiver.bind()
    nursery.start_soon(receiver.serve)
    bus = EventBus()
    osc = OscService(bus, OscConfig(enabled=True, host="127.0.0.1", port=port, **config))
    await nursery.start(osc.run)
    faces = FaceService(bus, [osc])
    await nursery.start(faces.run)
    return bus, receiver, osc


FACE = "/avatar/parameters/FaceOSC"
EMOTE = "/avatar/parameters/VRCEmote"


async def test_faces_are_sent_and_reset_after_the_duration(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        bus, receiver, _ = await start(nursery)
        bus.publish(FaceRequested("joy", duration=2.0))
        await trio.sleep(0.5)
        bus.publish(FaceRequested("sad", duration=1.0))  # alias for sorrow
        messages = await receiver.wait_for(6)
        nursery.cancel_scope.cancel()
    assert messages == [
        (FACE, 0),  # neutral when the avatar connects
        (EMOTE, 0),  # idle animation
        (FACE, 0),  # the face service's first face
        (FACE, 1),  # joy
        (FACE, 3),  # sorrow
        (FACE, 0),  # back to neutral after its second
    ]
    assert receiver.at[5] - receiver.at[4] >= 1.0


async def test_animation_then_idle_and_a_newer_one_cancels_the_reset(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        bus, receiver, _ = await start(nursery, animations={"idle": 0, "wave": 7, "dance": 9})
        await receiver.wait_for(3)
        bus.publish(AnimationRequested("wave", duration=2.0))
        await trio.sleep(1.0)
        bus.publish(AnimationRequested("dance", duration=3.0))  # before wave's reset
        await trio.sleep(0.5)
        bus.publish(AnimationRequested("moonwalk"))  # unknown: nothing sent
        messages = await receiver.wait_for(6)
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    assert messages[3:] == [(EMOTE, 7), (EMOTE, 9), (EMOTE, 0)]
    assert len(receiver.messages) == 6  # wave's reset was cancelled, no second idle
    assert receiver.at[5] - receiver.at[4] >= 3.0


async def test_state_faces_the_avatar_lacks_are_sent_as_neutral(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        bus, receiver, _ = await start(nursery, faces={"neutral": 0, "joy": 1, "thinking": 6})
        await receiver.wait_for(3)
        bus.publish(StateChanged(State.IDLE, State.LISTENING))  # "listening": not on this avatar
        await trio.sleep(0.1)
        bus.publish(StateChanged(State.LISTENING, State.THINKING))
        messages = await receiver.wait_for(5)
        nursery.cancel_scope.cancel()
    assert messages[3:] == [(FACE, 0), (FACE, 6)]


async def test_nobody_listening_is_not_an_error(autojump_clock: Any) -> None:
    """Sending to a closed port (ICMP port unreachable) must not take the service down."""
    probe = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    bus = EventBus()
    osc = OscService(bus, OscConfig(enabled=True, host="127.0.0.1", port=port))
    async with trio.open_nursery() as nursery:
        await nursery.start(osc.run)
        for face in ("joy", "angry", "fun"):
            await osc.show(face)
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert osc.sent >= 2  # it kept sending after the first refusal
