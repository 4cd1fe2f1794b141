"""Putting the robot together from its configuration: the brains, the audio devices, and the record of the
parts (``Appliance``) that the transports (control API, MQTT, ESPHome) act on. ``appliance.app`` wires them."""
