"""Local speech with espeak-ng: robotic, but needs no network. Used by the offline brain and for errors."""

from __future__ import annotations

import shutil
import subprocess

import trio

from appliance.audio.base import AudioClip
from appliance.audio.convert import AudioFormatError, decode_wav
from appliance.errors import ProviderBadReply, ProviderUnavailable


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


async def _kill(process: trio.Process) -> None:
    # Nothing to save in a half-spoken line; trio's default waits up to 5 s after SIGTERM, which would
    # break the 2 s shutdown promise.
    process.kill()


class EspeakSynthesizer:
    name = "espeak"

    def __init__(self, voice: str = "en-us", words_per_minute: int = 165) -> None:
        self.voice = voice
        self.words_per_minute = words_per_minute

    async def synthesize(self, text: str) -> AudioClip:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise ProviderUnavailable(self.name, "espeak-ng is not installed")
        try:
            # "--" so a reply starting with "-" is spoken, not parsed as an option.
            result = await trio.run_process(
                [exe, "--stdout", "-v", self.voice, "-s", str(self.words_per_minute), "--", text],
                capture_stdout=True,
                capture_stderr=True,
                deliver_cancel=_kill,
            )
        except subprocess.CalledProcessError as exc:
            raise ProviderBadReply(self.name, exc.stderr.decode(errors="replace").strip()[:200]) from None
        try:
            return decode_wav(result.stdout, name="espeak-ng output")
        except AudioFormatError as exc:
            raise ProviderBadReply(self.name, str(exc)) from None

    async def aclose(self) -> None:
        return None
