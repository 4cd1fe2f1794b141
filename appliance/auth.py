"""Who may use the control API: one bearer token, compared in constant time.

The token comes from the config (``control.token``, which ``$APPLIANCE_CONTROL__TOKEN`` overrides), else a
``token_file`` that only its owner can read, else systemd's credential ``control_token``. Without a token
the API only serves loopback, and checks the Host header so a web page cannot reach it by DNS rebinding.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from appliance.settings.control import ControlConfig

CREDENTIAL_NAME = "control_token"
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class ControlSetupError(Exception):
    """The control API cannot start as configured; the message says what to change."""


def read_token_file(path: Path) -> str:
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ControlSetupError(
                f"control.token_file {path}: readable by others (mode {stat.S_IMODE(info.st_mode):o}); "
                f"run chmod 600 {path}"
            )
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ControlSetupError(f"control.token_file {path}: file not found") from None
    except PermissionError:
        raise ControlSetupError(f"control.token_file {path}: permission denied") from None
    except UnicodeDecodeError:
        raise ControlSetupError(f"control.token_file {path}: not UTF-8 text") from None
    if not token:
        raise ControlSetupError(f"control.token_file {path}: file is empty")
    return token


def resolve_token(config: ControlConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token clients must send, or None when none is configured."""
    environ = os.environ if environ is None else environ
    token: str | None = None
    where = "control.token"
    if config.token is not None and config.token.get_secret_value().strip():
        token = config.token.get_secret_value().strip()
    elif config.token_file is not None:
        token, where = read_token_file(config.token_file), f"control.token_file {config.token_file}"
    elif environ.get("CREDENTIALS_DIRECTORY"):
        file = Path(environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        if file.is_file():
            token, where = file.read_text(encoding="utf-8").strip() or None, f"credential {CREDENTIAL_NAME}"
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ControlSetupError(f"{where}: token too short ({len(token)} characters, need {MIN_TOKEN_CHARS})")
    return token


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(config: ControlConfig, token: str | None) -> None:
    """Refuse to expose the API beyond this machine without a token."""
    if token is None and not is_loopback(config.host):
        raise ControlSetupError(
            f"control.host = {config.host!r} is reachable from the network but no token is set: set "
            f"control.token_file (mode 0600) or $APPLIANCE_CONTROL__TOKEN, or bind 127.0.0.1"
        )


def token_matches(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def host_header_is_loopback(host_header: str | None) -> bool:
    if not host_header:
        return False
    host = host_header.strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return is_loopback(host)
