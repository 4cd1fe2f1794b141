"""``appliance faces DIR``: every face as a PNG at the display's size, to see them without the robot."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from appliance.hardware.face_art import FaceArtist, FolderFaces, Look, to_png
from appliance.settings.hardware import FACES, DisplayConfig


def write_face_previews(config: DisplayConfig, folder: Path) -> list[Path]:
    """Writes ``<face>.png`` (and ``-blink`` / ``-talk`` variants) into ``folder``; returns the files."""
    size = config.size
    mono = config.driver in ("ssd1306", "sh1106")
    mode = "1" if mono else "RGB"
    artist: FaceArtist | FolderFaces
    if config.image_folder is not None:
        artist = FolderFaces(config.image_folder, size, mode, config.background)
        names = artist.faces()
    else:
        artist = FaceArtist(size, mode, config.colour, config.background)
        names = FACES
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        for suffix, look in (("", Look(name)), ("-blink", Look(name, eyes=0.0)), ("-talk", Look(name, mouth=0.7))):
            path = folder / f"{name}{suffix}.png"
            _write_atomically(path, to_png(artist.render(look)))
            written.append(path)
    return written


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
