"""The ``_esphomelib._tcp`` announcement, looked up with python-zeroconf on the loopback interface only."""

from __future__ import annotations

from typing import Any

import trio

from appliance.integrations.esphome.mdns import SERVICE_TYPE
from tests.esphome_helpers import KEY, esphome_appliance


def lookup(name: str) -> Any:
    from zeroconf import IPVersion, Zeroconf

    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        return zc.get_service_info(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", timeout=2000)
    finally:
        zc.close()


async def test_the_robot_is_announced_with_its_port_and_encryption() -> None:
    async with esphome_appliance(mdns=True, mdns_interfaces=["127.0.0.1"], encryption_key=KEY) as (
        _app,
        _log,
        server,
        _sink,
    ):
        info = None
        with trio.fail_after(30):
            while info is None:
                info = await trio.to_thread.run_sync(lookup, "robot")
        assert info.port == server.port
        assert info.properties[b"mac"] == server.mac.replace(":", "").lower().encode()
        assert info.properties[b"api_encryption"] == b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
        assert "127.0.0.1" in info.parsed_addresses()
        assert KEY.encode() not in b"".join(v or b"" for v in info.properties.values())
