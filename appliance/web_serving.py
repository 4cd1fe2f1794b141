"""Serving an ASGI app with hypercorn on a socket bound up front (the control API and `appliance serve`'s HTTP).

The socket is bound and listening before the web stack is loaded, so the port (also port 0's) is known at once
and early connections wait in the kernel's accept queue; hypercorn then takes the descriptor (``fd://``).
"""

from __future__ import annotations

import logging
import socket
from typing import Any


def listen_socket(host: str, port: int) -> tuple[int, str]:
    """Bind and listen now: (the descriptor, the bound address as an ``http://`` URL)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        bound_host, bound_port = sock.getsockname()[:2]
    except OSError:
        sock.close()
        raise
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    return sock.detach(), f"http://{shown}:{bound_port}"


def url_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def hypercorn_config(fd: int, logger: str, quiet_below: logging.Logger) -> Any:
    """hypercorn's settings for one of our servers: no access log, its own errors under ``logger`` (at WARNING
    at least: its "Running on" repeats ours), no Server header, short graceful shutdown."""
    from hypercorn.config import Config

    hyper = Config()
    hyper.bind = [f"fd://{fd}"]
    hyper.accesslog = None
    server_log = logging.getLogger(logger)
    server_log.setLevel(max(logging.WARNING, quiet_below.getEffectiveLevel()))
    hyper.errorlog = server_log
    hyper.graceful_timeout = 0.5
    hyper.include_server_header = False
    hyper.keep_alive_timeout = 30
    return hyper
