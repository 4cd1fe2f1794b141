"""The wake word check's audio and what the target must make of it, worked out here on the host.

The clip: a command said without the wake word (must be ignored), then "okay nabu" and a command (must reach
the STT). The target plays it through its file microphone paced by its listener (``audio.input_file_pace =
"listener"``): an emulated CPU too slow for real time still hears every block, only later. The same blocks go
through the same listening code here, so the utterance the target's STT receives is known in advance: its
length and level are compared with this reference, not with a constant.
"""

from __future__ import annotations

import io
import math
import sys
import wave
from dataclasses import dataclass

import numpy as np
from target import REPO

sys.path.insert(0, str(REPO))

VOICE = "en"  # an espeak-ng voice the bundled okay_nabu model hears with a wide margin (best window 0.99)
COMMAND = "what time is it"
LEAD_IN_BLOCKS = 25  # WavFileSource's 0.5 s of silence before the file


@dataclass(frozen=True)
class Expected:
    wav: bytes  # the clip to play, 16 kHz mono s16
    seconds: float  # the utterance the STT must receive: length...
    rms_db: float  # ... RMS level (dBFS) ...
    peak_db: float  # ... and peak level (dBFS)
    played_seconds: float


def _db(value: float) -> float:
    return 20 * math.log10(value / 32768) if value > 0 else -100.0


def build() -> Expected:
    """The clip and the one utterance the appliance's own listening code cuts from it (mode wake_word)."""
    from appliance.audio.base import BlockQueue
    from appliance.bus import EventBus
    from appliance.listening.endpointer import Segment
    from appliance.listening.service import ListeningService
    from appliance.settings.listening import ListeningConfig
    from tests import listening_fixtures as F

    clip = F.scene([F.command_alone(VOICE, COMMAND).samples, F.wake_and_command(VOICE, COMMAND, pause=0.3).samples])
    samples = clip.samples
    service = ListeningService(EventBus(), BlockQueue(), None, ListeningConfig(mode="wake_word"))  # type: ignore[arg-type]
    service._load()
    heard = np.concatenate([np.zeros(LEAD_IN_BLOCKS * 320, dtype=np.int16), samples, np.zeros(32_000, np.int16)])
    segments = [r for block in F.blocks(heard) if isinstance(r := service.process_block(block), Segment)]
    if len(segments) != 1:
        raise AssertionError(f"the reference run cut {len(segments)} utterances from the clip, not one")
    cut = segments[0].samples.astype(np.float64)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(F.RATE)
        out.writeframes(samples.astype("<i2").tobytes())
    return Expected(
        wav=buffer.getvalue(),
        seconds=len(cut) / F.RATE,
        rms_db=_db(math.sqrt(float(np.mean(cut**2)))),
        peak_db=_db(float(np.max(np.abs(cut)))),
        played_seconds=len(samples) / F.RATE,
    )
