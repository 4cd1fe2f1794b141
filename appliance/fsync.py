"""Making a new file's name survive a power cut: fsync the folder that holds it."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Best effort: some file systems cannot open or fsync a folder, and then there is nothing more to do."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
