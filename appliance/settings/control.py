"""Settings of the local control API (the ``[control]`` section)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from appliance.settings_base import Section


class ControlConfig(Section):
    """The HTTP API a laptop or phone on the same network uses to manage the robot.

    Bound to loopback by default. Binding any other address needs a bearer token (``token``,
    ``$APPLIANCE_CONTROL__TOKEN``, ``token_file`` with mode 0600, or the systemd credential ``control_token``).
    """

    enabled: bool = Field(default=True, description="serve the control API")
    host: str = Field(default="127.0.0.1", description="address to bind; non-loopback needs a token")
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port; 0 = any free port")
    token: SecretStr | None = Field(default=None, description="bearer token (prefer token_file or the environment)")
    token_file: Path | None = Field(default=None, description="file holding the bearer token; must be mode 0600")
    state_dir: Path | None = Field(
        default=None,
        description="where histories are kept; default $STATE_DIRECTORY, else ~/.local/state/appliance",
    )
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024, description="request body cap")
    body_timeout: float = Field(default=10.0, gt=0, le=300, description="a request body must arrive within (s)")
    max_say_chars: int = Field(default=1000, ge=1, le=20_000, description="longest text /say and /perform accept")
    max_queued_says: int = Field(default=16, ge=1, le=1000, description="queued /say requests kept")
    max_sse_clients: int = Field(default=8, ge=1, le=256, description="concurrent /events and /conversation streams")
    sse_buffer: int = Field(default=256, ge=8, le=10_000, description="events buffered per stream before it is cut")
    sse_heartbeat: float = Field(default=15.0, gt=0, le=300, description="keep-alive comment interval (s)")
    max_histories: int = Field(default=200, ge=1, le=100_000, description="stored conversations; oldest go first")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("host must not be empty")
        return value
