"""paho-mqtt driven from Trio: our tasks wait on its socket and call ``loop_read``/``loop_write``/``loop_misc``.

paho has no thread of its own here. The only blocking step, opening the connection (DNS, TCP, TLS
handshake), runs in a worker thread (``trio.to_thread``); after that a reader task waits until the socket is
readable, a writer task until it is writable while paho has bytes queued (paho tells us through its
``on_socket_register_write`` hooks), and a timer task runs the keep-alive once a second. paho's callbacks
(connect, message, disconnect) therefore run inside ``loop_read`` on the Trio thread.

Every connection is a fresh client: nothing queued for a dead connection survives into the next, and what
we publish waits in an :class:`Outbox` that keeps only the latest payload per topic, so a broker that is
down for a day costs one message per topic, not a day of them. Reconnects back off exponentially with
jitter (a fleet that lost its broker does not come back in lock-step), capped at ``reconnect_max``.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from appliance.settings.mqtt import MqttConfig

log = logging.getLogger(__name__)

MAX_EVENTS_KEPT = 16  # non-retained messages (error events) kept while disconnected


class MqttRefused(Exception):
    """The broker answered but will not let us in (wrong user or password, not authorised)."""


class ConnectionLost(Exception):
    pass


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


class Outbox:
    """What to publish next: the latest payload per retained topic, and a few recent one-off events."""

    def __init__(self) -> None:
        self.latest: dict[str, Outgoing] = {}
        self.events: deque[Outgoing] = deque(maxlen=MAX_EVENTS_KEPT)
        self._dirty = trio.Event()

    def put(self, topic: str, payload: str | bytes, *, qos: int = 0, retain: bool = True) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        message = Outgoing(topic, data, qos, retain)
        if retain:
            self.latest.pop(topic, None)  # re-insert: the dict keeps publishing order
            self.latest[topic] = message
        else:
            self.events.append(message)
        self._dirty.set()

    def take(self) -> list[Outgoing]:
        batch = [*self.latest.values(), *self.events]
        self.latest.clear()
        self.events.clear()
        return batch

    def __len__(self) -> int:
        return len(self.latest) + len(self.events)

    def poke(self) -> None:
        self._dirty.set()

    async def wait(self) -> None:
        await self._dirty.wait()
        self._dirty = trio.Event()


class _Wire:
    """The socket paho opened and whether it has bytes to write; told by paho's socket hooks.

    The hooks may run in the connecting worker thread, so they only set attributes and ask Trio (thread-safe
    ``run_sync_soon``) to wake the writer.
    """

    def __init__(self, token: trio.lowlevel.TrioToken, outbox: Outbox) -> None:
        self.token = token
        self.outbox = outbox
        self.sock: Any = None
        self.want_write = False
        self.wake_writer = trio.Event()
        self.connack = trio.Event()
        self.refused: str | None = None
        self.lost = trio.Event()
        self.lost_reason = ""

    def _soon(self, fn: Callable[[], None]) -> None:
        try:
            self.token.run_sync_soon(fn)
        except trio.RunFinishedError:  # an abandoned connect finishing after shutdown
            pass

    def opened(self, client: Any, userdata: Any, sock: Any) -> None:
        self.sock = sock

    def closed(self, client: Any, userdata: Any, sock: Any) -> None:
        try:
            trio.lowlevel.notify_closing(sock)  # wakes our reader/writer waiting on it
        except (RuntimeError, AttributeError, ValueError):
            pass
        self.sock = None

    def register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self.want_write = True
        self._soon(self.wake_writer.set)

    def unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self.want_write = False
        self._soon(self.outbox.poke)  # paho's queue drained: the next batch may go


class MqttLink:
    """Keeps one connection to the broker up; hands received messages to ``incoming``."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        password: str | None,
        will: tuple[str, str],
        subscriptions: list[tuple[str, int]],
        tls: ssl.SSLContext | None = None,
        on_connected: Callable[[], None] | None = None,
        on_status: Callable[[str, str], None] | None = None,
        incoming_buffer: int = 64,
    ) -> None:
        self.config = config
        self.client_id = client_id
        self._password = password
        self.will = will
        self.subscriptions = subscriptions
        self.tls = tls
        self.on_connected = on_connected
        self.on_status = on_status
        self.outbox = Outbox()
        self._incoming_send, self.incoming = trio.open_memory_channel[Incoming](incoming_buffer)
        self.connected = False
        self.status = "starting"
        self.detail = ""
        self.connects = 0
        self.failures = 0
        self.dropped_incoming = 0
        self.last_delay = 0.0
        self.connected_once_in_session = False

    # --- status -------------------------------------------------------------------------------------------------

    def _set_status(self, status: str, detail: str = "") -> None:
        if (status, detail) == (self.status, self.detail):
            return
        self.status, self.detail = status, detail
        if self.on_status is not None:
            self.on_status(status, detail)

    # --- the reconnect loop ------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        cfg = self.config
        while True:
            if self.status in ("starting", "disconnected"):
                # After a failure the status keeps saying what is wrong (and is logged once) while we retry.
                self._set_status("connecting", f"{cfg.host}:{cfg.port}")
            try:
                await self._session()
            except MqttRefused as exc:
                self._set_status("refused", str(exc))
            except ConnectionLost as exc:
                self._set_status("disconnected", str(exc))
            except trio.TooSlowError:
                self._set_status("unreachable", f"no answer from {cfg.host}:{cfg.port} within {cfg.connect_timeout} s")
            except OSError as exc:  # DNS, TCP, TLS (ssl.SSLError is an OSError)
                self._set_status("unreachable", _describe_os_error(exc))
            if self.connected_once_in_session:
                self.failures = 0
            self.failures += 1
            ceiling = min(cfg.reconnect_initial * 2 ** (self.failures - 1), cfg.reconnect_max)
            self.last_delay = random.uniform(ceiling / 2, ceiling)
            log.info("mqtt: reconnecting in %.1f s", self.last_delay, extra={"status": self.status})
            await trio.sleep(self.last_delay)

    def _new_client(self, wire: _Wire) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self._password)
        client.will_set(self.will[0], self.will[1], qos=1, retain=True)
        if self.tls is not None:
            client.tls_set_context(self.tls)
        client.connect_timeout = self.config.connect_timeout
        client.max_inflight_messages_set(20)
        client.max_queued_messages_set(1000)
        client.on_socket_open = wire.opened
        client.on_socket_close = wire.closed
        client.on_socket_register_write = wire.register_write
        client.on_socket_unregister_write = wire.unregister_write
        client.on_connect = self._connected_cb(wire)
        client.on_disconnect = self._disconnected_cb(wire)
        client.on_message = self._message
        return client

    async def _session(self) -> None:
        cfg = self.config
        self.connected_once_in_session = False
        wire = _Wire(trio.lowlevel.current_trio_token(), self.outbox)
        client = self._new_client(wire)
        with trio.fail_after(cfg.connect_timeout):
            # DNS + TCP + TLS handshake block: a worker thread does them. Nothing else touches the client
            # meanwhile; its hooks only set attributes and wake Trio through the token.
            await trio.to_thread.run_sync(
                lambda: client.connect(cfg.host, cfg.port, cfg.keepalive), abandon_on_cancel=True
            )
        if wire.sock is None:
            raise ConnectionLost("paho opened no socket")
        outcome: Exception
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, client, wire)
                nursery.start_soon(self._writer, client, wire)
                nursery.start_soon(self._timer, client, wire)
                with trio.move_on_after(cfg.connect_timeout):
                    await wire.connack.wait()
                if not wire.connack.is_set():
                    outcome = trio.TooSlowError()
                elif wire.refused is not None:
                    outcome = MqttRefused(wire.refused)
                else:
                    self.connected = self.connected_once_in_session = True
                    self.connects += 1
                    self._set_status("connected", f"{cfg.host}:{cfg.port}")
                    nursery.start_soon(self._flusher, client, wire)
                    await wire.lost.wait()
                    outcome = ConnectionLost(wire.lost_reason or "connection lost")
                nursery.cancel_scope.cancel()  # outside the nursery, so callers catch it plainly (no group)
        finally:
            was_connected = self.connected
            self.connected = False
            with trio.CancelScope(shield=True):
                await self._close(client, wire, graceful=was_connected)
        raise outcome

    async def _close(self, client: Any, wire: _Wire, *, graceful: bool) -> None:
        """On shutdown say ``offline`` ourselves (a clean DISCONNECT suppresses the last will), then close."""
        if graceful and wire.sock is not None:
            with trio.move_on_after(1.0):
                client.publish(self.will[0], self.will[1], qos=1, retain=True)
                client.disconnect()
                while wire.sock is not None and client.want_write():
                    await trio.lowlevel.wait_writable(wire.sock)
                    client.loop_write()
        if wire.sock is not None:
            client._sock_close()  # paho has no public "drop the socket now"; this runs our close hook

    # --- paho callbacks (run inside loop_read/loop_misc on the Trio thread) ---------------------------------------

    def _connected_cb(self, wire: _Wire) -> Callable[..., None]:
        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if reason.is_failure:
                wire.refused = _refusal(reason)
            else:
                client.subscribe(self.subscriptions)
                if self.on_connected is not None:
                    self.on_connected()
            wire.connack.set()

        return on_connect

    def _disconnected_cb(self, wire: _Wire) -> Callable[..., None]:
        def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            text = str(reason)  # paho names a dropped TCP connection "Unspecified error"
            wire.lost_reason = "the broker closed the connection" if text == "Unspecified error" else text
            wire.lost.set()

        return on_disconnect

    def _message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            self._incoming_send.send_nowait(Incoming(message.topic, bytes(message.payload), bool(message.retain)))
        except trio.WouldBlock:
            self.dropped_incoming += 1  # a flood: keep the robot responsive, drop what it cannot handle
            if self.dropped_incoming in (1, 10, 100) or self.dropped_incoming % 1000 == 0:
                log.warning("mqtt: %d incoming messages dropped (too many at once)", self.dropped_incoming)

    # --- the tasks that drive paho's socket ------------------------------------------------------------------

    async def _reader(self, client: Any, wire: _Wire) -> None:
        import paho.mqtt.client as mqtt

        while wire.sock is not None:
            sock = wire.sock
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.ClosedResourceError, OSError, ValueError):
                break
            while True:
                rc = client.loop_read()
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    wire.lost_reason = wire.lost_reason or mqtt.error_string(rc)
                    wire.lost.set()
                    return
                # TLS may hold whole decrypted packets the socket no longer signals: read them now.
                if not (isinstance(wire.sock, ssl.SSLSocket) and wire.sock.pending()):
                    break
            await trio.lowlevel.checkpoint()
        wire.lost.set()

    async def _writer(self, client: Any, wire: _Wire) -> None:
        import paho.mqtt.client as mqtt

        while True:
            while not wire.want_write:
                await wire.wake_writer.wait()
                wire.wake_writer = trio.Event()
            sock = wire.sock
            if sock is None:
                return
            try:
                await trio.lowlevel.wait_writable(sock)
            except (trio.ClosedResourceError, OSError, ValueError):
                wire.lost.set()
                return
            rc = client.loop_write()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                wire.lost_reason = wire.lost_reason or mqtt.error_string(rc)
                wire.lost.set()
                return

    async def _timer(self, client: Any, wire: _Wire) -> None:
        import paho.mqtt.client as mqtt

        while True:
            await trio.sleep(1.0)
            rc = client.loop_misc()  # keep-alive: sends PINGREQ, notices a missing PINGRESP
            if rc != mqtt.MQTT_ERR_SUCCESS:
                wire.lost_reason = wire.lost_reason or "no answer to keep-alive"
                wire.lost.set()
                return

    async def _flusher(self, client: Any, wire: _Wire) -> None:
        import paho.mqtt.client as mqtt

        while True:
            if not self.outbox or wire.want_write:
                # Nothing to send, or paho still has the last batch in hand: wait, so a stalled socket keeps
                # at most one batch in paho and the rest coalesced in the outbox.
                await self.outbox.wait()
                continue
            for message in self.outbox.take():
                info = client.publish(message.topic, message.payload, message.qos, message.retain)
                if info.rc == mqtt.MQTT_ERR_NO_CONN:
                    return
            await trio.lowlevel.checkpoint()


def _refusal(reason: Any) -> str:
    text = str(reason)
    if "authori" in text.lower() or "password" in text.lower():
        return f"{text}: check mqtt.username and the password (credential mqtt_password)"
    return text


def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc}; check mqtt.ca_file"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return f"{type(exc).__name__}: {exc.strerror or exc}"
