"""``_esphomelib._tcp`` over mDNS, so Home Assistant discovers the robot by itself.

python-zeroconf's blocking API runs its own thread; registering (which probes for a few hundred ms) and
unregistering happen in a worker thread, and the Trio task just holds the registration open.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from appliance import __version__
from appliance.settings.home_assistant import HomeAssistantConfig

log = logging.getLogger(__name__)

SERVICE_TYPE = "_esphomelib._tcp.local."


def service_info(config: HomeAssistantConfig, port: int, mac: str, encrypted: bool, addresses: list[str]) -> Any:
    from zeroconf import ServiceInfo

    properties = {
        "version": "2025.5.0",
        "mac": mac.replace(":", "").lower(),
        "platform": "host",
        "board": "appliance",
        "network": "ethernet",
        "friendly_name": config.friendly_name,
        "project_name": "appliance.talking-robot",
        "project_version": __version__,
    }
    if encrypted:
        properties["api_encryption"] = "Noise_NNpsk0_25519_ChaChaPoly_SHA256"
    return ServiceInfo(
        SERVICE_TYPE,
        f"{config.name}.{SERVICE_TYPE}",
        port=port,
        properties=properties,
        server=f"{config.name}.local.",
        parsed_addresses=addresses,
    )


def _local_addresses(interfaces: list[str]) -> list[str]:
    if interfaces:
        return list(interfaces)
    import ifaddr

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                found.append(ip.ip)
    return found or ["127.0.0.1"]


async def announce(config: HomeAssistantConfig, port: int, mac: str, encrypted: bool) -> None:
    """Hold the announcement until cancelled; a failure is logged once (discovery is a convenience)."""
    from zeroconf import IPVersion, Zeroconf

    interfaces = list(config.mdns_interfaces)
    addresses = _local_addresses(interfaces)
    info = service_info(config, port, mac, encrypted, addresses)

    def register() -> Any:
        zc = Zeroconf(interfaces=interfaces or None, ip_version=IPVersion.V4Only)  # type: ignore[arg-type]
        try:
            zc.register_service(info, allow_name_change=True)
        except Exception:
            zc.close()
            raise
        return zc

    try:
        zc = await trio.to_thread.run_sync(register, abandon_on_cancel=False)
    except (OSError, Exception) as exc:  # noqa: BLE001 - no multicast here: the robot still works by IP
        log.warning("mDNS announcement failed (%s); add the robot in Home Assistant by its address", exc)
        return
    log.info("mDNS: %s on %s port %s", info.name, ", ".join(addresses), port)
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):

            def close() -> None:
                try:
                    zc.unregister_service(info)
                finally:
                    zc.close()

            with trio.move_on_after(3):
                await trio.to_thread.run_sync(close, abandon_on_cancel=True)
