"""Fleets through an MQTT broker, visible in Home Assistant by MQTT discovery (the ``[mqtt]`` section)."""
