"""The robot's controls as ESPHome entities: a mic mute switch, a volume number, the face as a select, the
status LED as a light and a media player (announcements and media URLs through our speaker).

Each entity answers ``ListEntities``, reports its state, and applies a command through :class:`Robot`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from appliance.integrations.esphome.messages import pb
from appliance.integrations.esphome.robot import Robot

log = logging.getLogger(__name__)

# Home Assistant's MediaPlayerEntityFeature bits the player supports.
_MP_VOLUME_SET, _MP_VOLUME_MUTE, _MP_PLAY_MEDIA, _MP_STOP = 4, 8, 512, 4096
_MP_BROWSE_MEDIA, _MP_ANNOUNCE = 131072, 1048576
MEDIA_FEATURES = _MP_VOLUME_SET | _MP_VOLUME_MUTE | _MP_PLAY_MEDIA | _MP_STOP | _MP_BROWSE_MEDIA | _MP_ANNOUNCE

KEY_MUTE, KEY_VOLUME, KEY_FACE, KEY_LED, KEY_PLAYER = 1, 2, 3, 4, 5


@dataclass
class MediaState:
    """The player's own state: what it is doing, and the speaker mute (the switch mutes the microphone)."""

    playing: str = ""  # "" | "playing" | "announcing"
    muted: bool = False
    volume_before_mute: float = 1.0
    urls: list[str] = field(default_factory=list)


class Entities:
    def __init__(self, robot: Robot) -> None:
        self.robot = robot
        self.media = MediaState()

    def list_responses(self) -> list[Any]:
        r = self.robot
        return [
            pb.ListEntitiesSwitchResponse(
                object_id="mute",
                key=KEY_MUTE,
                name="Mute",
                icon="mdi:microphone-off",
                entity_category=pb.ENTITY_CATEGORY_CONFIG,
            ),
            pb.ListEntitiesNumberResponse(
                object_id="volume",
                key=KEY_VOLUME,
                name="Volume",
                icon="mdi:volume-high",
                min_value=0,
                max_value=100,
                step=1,
                unit_of_measurement="%",
                mode=pb.NUMBER_MODE_SLIDER,
                entity_category=pb.ENTITY_CATEGORY_CONFIG,
            ),
            pb.ListEntitiesSelectResponse(
                object_id="face", key=KEY_FACE, name="Face", icon="mdi:emoticon", options=r.faces()
            ),
            pb.ListEntitiesLightResponse(
                object_id="status_led",
                key=KEY_LED,
                name="Status LED",
                supported_color_modes=[pb.COLOR_MODE_BRIGHTNESS],
                entity_category=pb.ENTITY_CATEGORY_CONFIG,
            ),
            pb.ListEntitiesMediaPlayerResponse(
                object_id="media_player",
                key=KEY_PLAYER,
                name="Media player",
                supports_pause=False,
                feature_flags=MEDIA_FEATURES,
                supported_formats=[
                    pb.MediaPlayerSupportedFormat(
                        format="wav", sample_rate=16000, num_channels=1, sample_bytes=2, purpose=purpose
                    )
                    for purpose in (pb.MEDIA_PLAYER_FORMAT_PURPOSE_DEFAULT, pb.MEDIA_PLAYER_FORMAT_PURPOSE_ANNOUNCEMENT)
                ],
            ),
        ]

    def states(self) -> list[Any]:
        r = self.robot
        colour = r.led_colour()
        media_state = {
            "playing": pb.MEDIA_PLAYER_STATE_PLAYING,
            "announcing": pb.MEDIA_PLAYER_STATE_ANNOUNCING,
        }.get(self.media.playing, pb.MEDIA_PLAYER_STATE_IDLE)
        volume = r.volume()
        return [
            pb.SwitchStateResponse(key=KEY_MUTE, state=r.muted()),
            pb.NumberStateResponse(key=KEY_VOLUME, state=round(volume * 100)),
            pb.SelectStateResponse(key=KEY_FACE, state=r.face()),
            pb.LightStateResponse(
                key=KEY_LED,
                state=r.led_on,
                brightness=r.led_brightness,
                color_mode=pb.COLOR_MODE_BRIGHTNESS,
                red=colour[0],
                green=colour[1],
                blue=colour[2],
            ),
            pb.MediaPlayerStateResponse(key=KEY_PLAYER, state=media_state, volume=volume, muted=self.media.muted),
        ]

    def command(self, message: Any) -> str | None:
        """Apply a command; returns a media URL to play when the command asks for one (None otherwise)."""
        r = self.robot
        if isinstance(message, pb.SwitchCommandRequest) and message.key == KEY_MUTE:
            r.mute(message.state)
        elif isinstance(message, pb.NumberCommandRequest) and message.key == KEY_VOLUME:
            if message.state == message.state:  # not NaN
                r.set_volume(message.state / 100)
        elif isinstance(message, pb.SelectCommandRequest) and message.key == KEY_FACE:
            if not r.show_face(message.state):
                log.info("Home Assistant asked for an unknown face %r", message.state[:40])
        elif isinstance(message, pb.LightCommandRequest) and message.key == KEY_LED:
            r.set_led(
                message.state if message.has_state else None, message.brightness if message.has_brightness else None
            )
        elif isinstance(message, pb.MediaPlayerCommandRequest) and message.key == KEY_PLAYER:
            return self._media(message)
        else:
            log.info("command for unknown entity key %s ignored", getattr(message, "key", "?"))
        return None

    def _media(self, message: Any) -> str | None:
        r = self.robot
        if message.has_volume and message.volume == message.volume:
            r.set_volume(message.volume)
            self.media.muted = False
        if message.has_command:
            command = message.command
            if command in (pb.MEDIA_PLAYER_COMMAND_STOP, pb.MEDIA_PLAYER_COMMAND_PAUSE):
                if self.media.playing:
                    r.stop()
            elif command == pb.MEDIA_PLAYER_COMMAND_MUTE and not self.media.muted:
                self.media.muted, self.media.volume_before_mute = True, r.volume()
                r.set_volume(0.0)
            elif command == pb.MEDIA_PLAYER_COMMAND_UNMUTE and self.media.muted:
                self.media.muted = False
                r.set_volume(self.media.volume_before_mute)
            elif command == pb.MEDIA_PLAYER_COMMAND_VOLUME_UP:
                r.set_volume(r.volume() + 0.1)
            elif command == pb.MEDIA_PLAYER_COMMAND_VOLUME_DOWN:
                r.set_volume(r.volume() - 0.1)
        if message.has_media_url and message.media_url:
            return message.media_url
        return None
