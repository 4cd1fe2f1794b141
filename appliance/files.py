"""Files that are never half-written (write a temporary file next to the target, fsync, rename), names that
survive a power cut (fsync the folder), and where the robot keeps its state."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
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


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, keep_previous: Path | None = None) -> None:
    """Replace ``path`` with ``data`` in one step; readers see the old file or the new one, never a mix.

    With ``keep_previous`` the file being replaced stays available under that name (hard link, then rename,
    so the target name always points at a complete file).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    link: Path | None = None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous is not None and path.exists():
            link = keep_previous.with_name(f".{keep_previous.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            try:
                os.link(path, link)
            except OSError:  # file systems without hard links: a copy is second best
                link.write_bytes(path.read_bytes())
            os.replace(link, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, link):
            if leftover is not None:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        raise
    fsync_dir(path.parent)


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """systemd's StateDirectory when run as a service, the XDG state directory otherwise."""
    environ = os.environ if environ is None else environ
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "appliance"
