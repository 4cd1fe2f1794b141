"""``[home_assistant]``: the ESPHome native-API server Home Assistant connects to."""

from __future__ import annotations

import binascii

from pydantic import Field, SecretStr, field_validator

from appliance.settings_base import Section


class HomeAssistantConfig(Section):
    esphome: bool = Field(default=False, description="serve the ESPHome native API (Home Assistant adopts the robot)")
    host: str = Field(default="0.0.0.0", description="address to listen on")
    port: int = Field(default=6053, ge=0, le=65535, description="Home Assistant expects 6053; 0 = any free port")
    name: str = Field(
        default="appliance",
        min_length=1,
        max_length=31,
        pattern=r"^[a-z0-9-]+$",
        description="device name (lowercase letters, digits, '-'), also the mDNS host name",
    )
    friendly_name: str = Field(default="Talking robot", max_length=120)
    encryption_key: SecretStr | None = Field(
        default=None, description="base64 of 32 bytes: Noise encryption, as in an ESPHome device's api.encryption.key"
    )
    mdns: bool = Field(default=True, description="announce _esphomelib._tcp on the LAN")
    mdns_interfaces: list[str] = Field(default_factory=list, description="addresses to announce on; empty = all")
    max_connections: int = Field(default=4, ge=1, le=32, description="clients served at once")
    idle_timeout: float = Field(default=90.0, gt=0, description="drop a client silent this long (s)")
    write_timeout: float = Field(default=5.0, gt=0, description="a client that takes longer to read is dropped (s)")
    reply_timeout: float = Field(default=20.0, gt=0, description="Assist must send the next pipeline event within (s)")
    tts_timeout: float = Field(default=15.0, gt=0, description="fetching a TTS or announcement URL (s)")
    timer_ring_seconds: float = Field(default=30.0, gt=0, description="a finished timer rings at most this long")

    @field_validator("encryption_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        try:
            raw = binascii.a2b_base64(value.get_secret_value().strip(), strict_mode=True)
        except binascii.Error:
            raise ValueError("must be base64 (32 bytes)") from None
        if len(raw) != 32:
            raise ValueError("must be base64 of exactly 32 bytes")
        return value

    def psk(self) -> bytes | None:
        """The raw Noise pre-shared key, or None for plaintext."""
        if self.encryption_key is None:
            return None
        return binascii.a2b_base64(self.encryption_key.get_secret_value().strip())
