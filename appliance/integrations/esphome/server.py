"""The ESPHome native-API server: Home Assistant connects here as it does to an ESPHome board.

One task per client reads frames and answers them; a second one writes from a bounded outbox, so a client
that stops reading fills its own outbox and is dropped without the robot ever waiting on it. Every failure
of one connection (bad framing, wrong key, silence, a full outbox) ends that connection with one log line.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

import trio
from google.protobuf.message import DecodeError

from appliance import __version__
from appliance.events import FaceChanged, LedChanged, MuteRequested, StateChanged, TurnFinished
from appliance.groups import single_error
from appliance.integrations.esphome.entities import Entities
from appliance.integrations.esphome.frames import FrameError, NoiseTransport, PlainTransport, Reader, Transport
from appliance.integrations.esphome.messages import API_VERSION, TYPE_TO_CLASS, pb, type_of
from appliance.integrations.esphome.robot import Robot
from appliance.integrations.esphome.satellite import FEATURE_FLAGS, Satellite
from appliance.settings.home_assistant import HomeAssistantConfig

if TYPE_CHECKING:
    from appliance.assembly.parts import Appliance

log = logging.getLogger(__name__)

_OUTBOX = 512  # messages (~10 s of microphone audio) a client may fall behind before it is dropped
_HANDSHAKE_TIMEOUT = 10.0
_VOLUME_POLL = 5.0
_ENTITY_COMMANDS = (
    pb.SwitchCommandRequest,
    pb.NumberCommandRequest,
    pb.SelectCommandRequest,
    pb.LightCommandRequest,
    pb.MediaPlayerCommandRequest,
)


def mac_address(name: str) -> str:
    """A stable, locally administered MAC-like id for Home Assistant's device registry (the real one is
    nobody's business, and a container may not have one)."""
    import hashlib

    digest = hashlib.sha256(f"{socket.gethostname()}/{name}".encode()).digest()
    octets = [digest[0] & 0xFC | 0x02, *digest[1:6]]
    return ":".join(f"{b:02X}" for b in octets)


class Connection:
    def __init__(self, server: EsphomeServer, transport: Transport, peer: str) -> None:
        self.server = server
        self.transport = transport
        self.name = peer
        self.scope = trio.CancelScope()
        self.outbox, self._outbox_receive = trio.open_memory_channel[bytes](_OUTBOX)
        self.greeted = False
        self.states = False
        self.client = ""
        self.reason: str | None = None
        self.audio_sent_at: float | None = None  # the first VoiceAssistantAudio of the current pipeline left here

    def send(self, *messages: Any) -> None:
        if self.reason is not None:
            return
        for message in messages:
            data = self.transport.encode(type_of(message), message.SerializeToString())
            try:
                self.outbox.send_nowait(data)
            except trio.WouldBlock:
                self.close("not reading (outbox full)")
                return
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return

    def close(self, reason: str) -> None:
        """End the connection now (what is still in the outbox is dropped)."""
        if self.reason is None:
            self.reason = reason
            self.scope.cancel()

    def finish(self, reason: str) -> None:
        """End the connection after the outbox has been written (a polite goodbye)."""
        if self.reason is None:
            self.reason = reason
            self.outbox.close()

    async def write(self, stream: trio.abc.SendStream, timeout: float) -> None:
        async for data in self._outbox_receive:
            with trio.move_on_after(timeout) as late:
                await stream.send_all(data)
            if late.cancelled_caught:
                self.close(f"not reading (a write took over {timeout:g} s)")
                return


class EsphomeServer:
    name = "esphome"

    def __init__(self, config: HomeAssistantConfig, appliance: Appliance, satellite: Satellite) -> None:
        self.config = config
        self.app = appliance
        self.robot = Robot(appliance)
        self.entities = Entities(self.robot)
        self.satellite = satellite
        satellite.robot = self.robot
        self.connections: set[Connection] = set()
        self.port: int | None = None
        self.mac = mac_address(config.name)
        self.refused = 0
        self._psk = config.psk()
        self._last_states: dict[int, bytes] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.satellite.run)
            nursery.start_soon(self._follow_states)
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            if self.config.mdns:
                from appliance.integrations.esphome.mdns import announce

                nursery.start_soon(announce, self.config, self.port, self.mac, self._psk is not None)
            log.info(
                "ESPHome API on %s:%s (%s)",
                self.config.host,
                self.port,
                "encrypted" if self._psk else "plaintext",
            )
            task_status.started(self.port)

    # --- one client ---------------------------------------------------------------------------------------

    async def _serve(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        if len(self.connections) >= self.config.max_connections:
            log.warning("ESPHome client %s refused: %d clients already", peer, len(self.connections))
            self.refused += 1
            await stream.aclose()
            return
        transport: Transport = NoiseTransport(self._psk, self.config.name, self.mac) if self._psk else PlainTransport()
        conn = Connection(self, transport, peer)
        self.connections.add(conn)
        reason = "closed by the client"
        level = logging.INFO
        try:
            with conn.scope, single_error():
                reader = Reader(stream)
                with trio.fail_after(min(_HANDSHAKE_TIMEOUT, self.config.idle_timeout)):
                    await transport.handshake(reader, stream)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.write, stream, self.config.write_timeout)
                    await self._read(conn, reader)
                    conn.finish("done")  # the writer drains the outbox, then the connection closes
        except FrameError as exc:
            reason, level = str(exc), logging.WARNING
        except trio.TooSlowError:
            reason, level = "handshake not finished in time", logging.WARNING
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass
        finally:
            self.connections.discard(conn)
            self.satellite.detach(conn)
            with trio.CancelScope(shield=True), trio.move_on_after(0.5):
                await stream.aclose()
        if conn.reason is not None and conn.reason.startswith(("not reading", "silent")):
            level = logging.WARNING
        log.log(level, "ESPHome client %s (%s) disconnected: %s", peer, conn.client or "-", conn.reason or reason)

    async def _read(self, conn: Connection, reader: Reader) -> None:
        idle = self.config.idle_timeout
        while True:
            with trio.move_on_after(idle) as silent:
                msg_type, payload = await conn.transport.receive(reader)
            if silent.cancelled_caught:
                conn.close(f"silent for {idle:g} s")
                return
            cls = TYPE_TO_CLASS.get(msg_type)
            if cls is None:
                log.debug("ESPHome message type %d ignored", msg_type)
                continue
            try:
                message = cls.FromString(payload)
            except DecodeError:
                raise FrameError(f"undecodable {cls.__name__}") from None
            if not conn.greeted and not isinstance(message, pb.HelloRequest):
                raise FrameError(f"{cls.__name__} before HelloRequest")
            self._dispatch(conn, message)
            if conn.reason is not None:
                return

    def _dispatch(self, conn: Connection, message: Any) -> None:
        sat = self.satellite
        if isinstance(message, pb.HelloRequest):
            conn.greeted = True
            conn.client = message.client_info[:64]
            conn.send(
                pb.HelloResponse(
                    api_version_major=API_VERSION[0],
                    api_version_minor=API_VERSION[1],
                    server_info=f"appliance {__version__}"[:32],
                    name=self.config.name,
                )
            )
        elif isinstance(message, pb.AuthenticationRequest):
            conn.send(pb.AuthenticationResponse(invalid_password=False))
        elif isinstance(message, pb.PingRequest):
            conn.send(pb.PingResponse())
        elif isinstance(message, pb.DisconnectRequest):
            conn.send(pb.DisconnectResponse())
            conn.finish("the client said goodbye")
        elif isinstance(message, pb.DisconnectResponse):
            conn.finish("disconnected")
        elif isinstance(message, pb.DeviceInfoRequest):
            conn.send(self.device_info())
        elif isinstance(message, pb.ListEntitiesRequest):
            conn.send(*self.entities.list_responses(), pb.ListEntitiesDoneResponse())
        elif isinstance(message, pb.SubscribeStatesRequest):
            conn.states = True
            conn.send(*self.entities.states())
        elif isinstance(message, _ENTITY_COMMANDS):
            url = self.entities.command(message)
            if url and self._nursery is not None:
                self._nursery.start_soon(self._play_media, url, bool(message.has_announcement and message.announcement))
            self.push_states()
        elif isinstance(message, pb.SubscribeVoiceAssistantRequest):
            if message.subscribe:
                sat.attach(conn)
                log.info("Home Assistant (%s) subscribed to voice", conn.name)
            else:
                sat.detach(conn)
        elif isinstance(message, pb.VoiceAssistantResponse):
            sat.on_response(message)
        elif isinstance(message, pb.VoiceAssistantEventResponse):
            sat.on_event(message)
        elif isinstance(message, pb.VoiceAssistantTimerEventResponse):
            sat.on_timer(message)
        elif isinstance(message, pb.VoiceAssistantAnnounceRequest):
            if self._nursery is not None:
                self._nursery.start_soon(self._announce, conn, message)
        elif isinstance(message, pb.VoiceAssistantConfigurationRequest):
            conn.send(sat.configuration())
        elif isinstance(message, pb.VoiceAssistantSetConfiguration):
            sat.set_configuration(list(message.active_wake_words))
        else:
            log.debug("ESPHome %s ignored", type(message).__name__)

    def device_info(self) -> Any:
        return pb.DeviceInfoResponse(
            uses_password=False,
            name=self.config.name,
            friendly_name=self.config.friendly_name,
            mac_address=self.mac,
            esphome_version="2025.5.0",
            model="Talking robot",
            manufacturer="appliance",
            project_name="appliance.talking-robot",
            project_version=__version__,
            voice_assistant_feature_flags=FEATURE_FLAGS,
            api_encryption_supported=self._psk is not None,
        )

    # --- playing what Home Assistant sends ----------------------------------------------------------------

    async def _play_media(self, url: str, announcement: bool) -> None:
        self.entities.media.playing = "announcing" if announcement else "playing"
        self.push_states()
        try:
            await self.satellite.play_urls([url], "")
        finally:
            self.entities.media.playing = ""
            self.push_states()

    async def _announce(self, conn: Connection, message: Any) -> None:
        self.entities.media.playing = "announcing"
        self.push_states()
        try:
            await self.satellite.announce(conn, message)
        finally:
            self.entities.media.playing = ""
            self.push_states()

    # --- entity states ------------------------------------------------------------------------------------

    def push_states(self) -> None:
        """Send the states that changed since last time to every client that subscribed."""
        changed = []
        for state in self.entities.states():
            data = state.SerializeToString()
            if self._last_states.get(state.key) != data:
                self._last_states[state.key] = data
                changed.append(state)
        if not changed:
            return
        for conn in tuple(self.connections):
            if conn.states:
                conn.send(*changed)

    async def _follow_states(self) -> None:
        self._last_states = {s.key: s.SerializeToString() for s in self.entities.states()}
        types = (MuteRequested, FaceChanged, LedChanged, StateChanged, TurnFinished)
        with self.app.bus.subscribe(*types, name="esphome-states", size=256) as sub:
            while True:
                # The volume has no event of its own (the control API sets the sink's gain): look every few
                # seconds too, which costs nothing worth measuring.
                with trio.move_on_after(_VOLUME_POLL):
                    await sub.receive.receive()
                self.push_states()
