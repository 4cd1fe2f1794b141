"""Audio in and out: the protocols, blocks and clips, and the implementations."""

from appliance.audio.base import AudioClip, AudioSink, AudioSource, BlockQueue, level_db

__all__ = ["AudioClip", "AudioSink", "AudioSource", "BlockQueue", "level_db"]
