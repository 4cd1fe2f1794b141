"""sd_notify: READY, WATCHDOG, STATUS, STOPPING. Does nothing when not started by systemd."""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET")
        self.sent: list[str] = []
        self._daemon = None
        if self.socket_path:
            try:
                # systemd-python ships no type information; it is used through a narrow duck type below
                self._daemon = importlib.import_module("systemd.daemon")
            except ImportError:
                log.debug("systemd-python not installed; writing to NOTIFY_SOCKET directly")

    @property
    def enabled(self) -> bool:
        return bool(self.socket_path)

    def notify(self, message: str) -> None:
        self.sent.append(message)
        if not self.socket_path:
            return
        try:
            if self._daemon is not None:
                self._daemon.notify(message)
            else:
                self._send(message)
        except OSError as exc:
            log.warning("sd_notify %r failed: %s", message.split("=")[0], exc)

    def _send(self, message: str) -> None:
        path = self.socket_path or ""
        address = "\0" + path[1:] if path.startswith("@") else path
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())

    def ready(self) -> None:
        self.notify("READY=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Half of systemd's WatchdogSec for this process, or None when no watchdog is set up."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None
