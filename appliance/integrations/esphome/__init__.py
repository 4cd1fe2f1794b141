"""The robot as an ESPHome native-API device, so Home Assistant adopts it like a voice satellite board.

``server`` speaks the wire protocol (plaintext or Noise frames, protobuf messages from aioesphomeapi's own
definitions), ``entities`` maps the robot's controls onto ESPHome entities, ``satellite`` runs Assist
pipelines and plays what Home Assistant sends, ``mdns`` announces the device. Off unless
``[home_assistant] esphome = true``.
"""
