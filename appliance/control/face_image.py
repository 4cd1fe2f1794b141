"""A small picture of the current face for ``GET /face.png``.

When the face service can render itself (a display driver that keeps its frame), that image is served;
otherwise this draws a simple 128×64 face like the robot's OLED would show: two eyes and a mouth whose
shapes follow the face name. PNG is written by hand (zlib + CRC), so no imaging library is needed.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

WIDTH, HEIGHT = 128, 64

# face -> (eye shape, mouth curve): curve > 0 smiles, < 0 frowns, None = round "o" mouth
_SHAPES: dict[str, tuple[str, float | None]] = {
    "neutral": ("round", 0.0),
    "joy": ("arc", 1.0),
    "fun": ("arc", 0.7),
    "angry": ("slant", -0.6),
    "sorrow": ("droop", -1.0),
    "surprised": ("wide", None),
}


def _disc(img: np.ndarray, cx: float, cy: float, r: float) -> None:
    yy, xx = np.ogrid[:HEIGHT, :WIDTH]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 255


def _line(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, width: float = 2.0) -> None:
    for t in np.linspace(0.0, 1.0, 64):
        _disc(img, x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, width / 2)


def draw_face(name: str) -> np.ndarray:
    eyes, curve = _SHAPES.get(name, _SHAPES["neutral"])
    img = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    for cx in (40, 88):
        if eyes == "round":
            _disc(img, cx, 24, 7)
        elif eyes == "wide":
            _disc(img, cx, 22, 10)
        elif eyes == "arc":  # happy eyes: upside-down arcs
            xs = np.linspace(cx - 8, cx + 8, 17)
            for x in xs:
                _disc(img, x, 26 - 6 * (1 - ((x - cx) / 8) ** 2), 1.5)
        elif eyes == "slant":
            _disc(img, cx, 26, 6)
            inner = 1 if cx < WIDTH / 2 else -1
            _line(img, cx - 10 * inner, 12, cx + 8 * inner, 18, 3)
        else:  # droop
            _disc(img, cx, 26, 6)
            outer = -1 if cx < WIDTH / 2 else 1
            _line(img, cx + 10 * outer, 20, cx - 6 * outer, 14, 3)
    if curve is None:
        _disc(img, 64, 48, 6)
        img[44:53, 60:69][np.hypot(*np.ogrid[-4:5, -4:5]) < 3.5] = 0
    else:
        xs = np.linspace(48, 80, 33)
        for x in xs:
            _disc(img, x, 48 + curve * 6 * (1 - ((x - 64) / 16) ** 2), 1.5)
    return img


def encode_png(gray: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a 2-D uint8 array."""
    height, width = gray.shape
    raw = b"".join(b"\x00" + gray[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def face_png(name: str) -> bytes:
    return encode_png(draw_face(name))
