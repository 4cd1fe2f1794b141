"""A real Mosquitto on 127.0.0.1 for the MQTT tests and the fleet benchmark: plain, or TLS with a password.

Certificates (a CA and a server certificate for 127.0.0.1/localhost) are made with ``cryptography``; the
password file with ``mosquitto_passwd``. Mosquitto comes from the Debian package ``mosquitto`` (the
Makefile's APT_PACKAGES).
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def mosquitto_missing() -> str | None:
    for tool in (MOSQUITTO, MOSQUITTO_PASSWD):
        if not Path(tool).exists():
            return f"{Path(tool).name} is not installed (it is in the Makefile's APT_PACKAGES: run make deps)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path) -> Certificates:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appliance test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths.key.chmod(0o600)
    return paths


class Mosquitto:
    """One broker process; ``restart()`` keeps the port (and, like a broker without persistence, loses retained
    messages)."""

    def __init__(
        self,
        directory: Path,
        *,
        tls: bool = False,
        users: dict[str, str] | None = None,
        max_connections: int = -1,
        sys_interval: int = 10,
    ) -> None:
        self.dir = directory
        self.tls = tls
        self.users = users or {}
        self.port = free_port()
        self.certs: Certificates | None = make_certificates(directory) if tls else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            f"sys_interval {sys_interval}",
            f"max_connections {max_connections}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            # Started as root, mosquitto would switch to the user "mosquitto", which cannot read our files.
            f"user {getpass.getuser()}",
        ]
        if self.users:
            passwd = directory / "passwd"
            passwd.touch(mode=0o600)
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd), user, password], check=True, capture_output=True)
            lines += [f"password_file {passwd}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if self.certs is not None:
            lines += [f"cafile {self.certs.ca}", f"certfile {self.certs.cert}", f"keyfile {self.certs.key}"]
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not open its port")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HomeAssistant:
    """paho-mqtt standing in for Home Assistant (and an operator): records every message it sees.

    paho's own network thread runs it (``loop_start``); tests wait with :meth:`wait_for`, polling on Trio.
    """

    def __init__(
        self,
        broker: Mosquitto,
        *,
        username: str | None = None,
        password: str | None = None,
        topics: tuple[str, ...] = ("#",),
        client_id: str = "home-assistant",
    ) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
        if username is not None:
            self.client.username_pw_set(username, password)
        if broker.certs is not None:
            self.client.tls_set(ca_certs=str(broker.certs.ca))
        self.topics = topics
        self.connected = threading.Event()

        def on_connect(client, userdata, flags, reason, properties):  # type: ignore[no-untyped-def]
            client.subscribe([(t, 1) for t in self.topics])
            self.connected.set()

        def on_message(client, userdata, message):  # type: ignore[no-untyped-def]
            with self._lock:
                self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", broker.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("the Home Assistant stand-in could not connect")

    def seen(self, topic: str | None = None) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return [m for m in self.messages if topic is None or m[0] == topic]

    def last(self, topic: str) -> bytes | None:
        found = self.seen(topic)
        return found[-1][1] if found else None

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    async def wait_for(self, predicate, timeout: float = 15.0):  # type: ignore[no-untyped-def]
        """The first message (topic, payload, retained) for which ``predicate`` is true; waits for it."""
        import trio

        checked = 0
        with trio.fail_after(timeout):
            while True:
                with self._lock:
                    new = self.messages[checked:]
                for message in new:
                    checked += 1
                    if predicate(*message):
                        return message
                await trio.sleep(0.02)

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
