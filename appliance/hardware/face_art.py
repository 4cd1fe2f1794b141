"""Faces as pictures: drawn with Pillow at any size, or loaded from a folder of images.

A face is drawn from three inputs: its name, how open the eyes are (blinking) and how open the mouth is
(speaking). Everything is proportional to the picture, so the same code suits a 128x64 OLED and a 240x240
LCD; on one-bit displays the colours become white on black.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from appliance.settings.hardware import FACES

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Look:
    """What is drawn for a moment: which face, eyes 0 (shut) .. 1 (open), mouth 0 (closed) .. 1 (wide)."""

    face: str = "neutral"
    eyes: float = 1.0
    mouth: float = 0.0


class FaceArtist:
    """Draws the built-in faces."""

    def __init__(self, size: tuple[int, int], mode: str = "RGB", colour: str = "#ffffff", background: str = "#000000"):
        self.size = size
        self.mode = mode
        self.colour: str | int = colour if mode != "1" else 1
        self.background: str | int = background if mode != "1" else 0
        w, h = size
        # The face lives in a box about twice as wide as high, centred; u is its unit length.
        self.u = min(w / 2.0, h * 1.0) * 0.95
        self.cx, self.cy = w / 2.0, h / 2.0
        self.stroke = max(1, round(self.u / 22))

    def faces(self) -> tuple[str, ...]:
        return FACES

    def render(self, look: Look) -> Image.Image:
        image = Image.new(self.mode, self.size, self.background)
        draw = ImageDraw.Draw(image)
        face = look.face if look.face in FACES else "neutral"
        u, cx, cy = self.u, self.cx, self.cy
        eye_dx, eye_y, eye_r = 0.42 * u, cy - 0.12 * u, 0.14 * u
        mouth_y = cy + 0.28 * u
        for side in (-1, 1):
            self._eye(draw, face, side, cx + side * eye_dx, eye_y, eye_r, look.eyes)
        self._mouth(draw, face, cx, mouth_y, look.mouth)
        self._extras(draw, face, eye_y, eye_r)
        return image

    # --- parts ------------------------------------------------------------------------------------------

    def _eye(self, draw: ImageDraw.ImageDraw, face: str, side: int, x: float, y: float, r: float, open_: float) -> None:
        c, s = self.colour, self.stroke
        if face in ("joy", "fun") and not (face == "fun" and side > 0):
            # happy closed eyes: an upward arc  ^
            draw.arc([x - r, y - r * 0.6, x + r, y + r * 1.4], 200, 340, fill=c, width=s + 1)
            return
        if face == "fun":  # the other eye winks:  >
            draw.line([(x - r, y - r * 0.6), (x + r * 0.4, y), (x - r, y + r * 0.6)], fill=c, width=s + 1)
            return
        if face == "sleeping":
            draw.arc([x - r, y - r * 1.2, x + r, y + r * 0.6], 20, 160, fill=c, width=s + 1)
            return
        radius = r * (1.25 if face in ("surprised", "listening") else 1.0)
        height = radius * max(0.08, open_)
        if height < radius * 0.2:  # shut: a line
            draw.line([(x - radius, y), (x + radius, y)], fill=c, width=s + 1)
        elif face == "surprised":
            draw.ellipse([x - radius, y - height, x + radius, y + height], outline=c, width=s + 1)
            pr = radius * 0.35
            draw.ellipse([x - pr, y - pr * height / radius, x + pr, y + pr * height / radius], fill=c)
        else:
            draw.ellipse([x - radius * 0.8, y - height, x + radius * 0.8, y + height], fill=c)
            if face == "thinking":  # pupils looking up and aside
                pr = radius * 0.3
                px, py = x + radius * 0.35, y - height * 0.45
                draw.ellipse([px - pr, py - pr, px + pr, py + pr], fill=self.background)
        # A brow's inner end is the one nearer the middle of the face (x - side * ...); image y grows downwards.
        if face == "angry":  # brows down towards the middle: a frown
            draw.line([(x - side * r * 1.3, y - r * 1.1), (x + side * r * 0.9, y - r * 1.9)], fill=c, width=s + 1)
        elif face == "sorrow":  # brows up towards the middle: worried
            draw.line([(x - side * r * 1.2, y - r * 1.9), (x + side * r * 0.9, y - r * 1.2)], fill=c, width=s + 1)

    def _mouth(self, draw: ImageDraw.ImageDraw, face: str, x: float, y: float, open_: float) -> None:
        c, s, u = self.colour, self.stroke, self.u
        w = 0.26 * u
        if open_ > 0.05:  # speaking: an open mouth whose height follows the voice
            height = 0.04 * u + 0.16 * u * min(1.0, open_)
            width = w * (1.1 if face in ("joy", "fun") else 0.85)
            draw.ellipse([x - width, y - height / 2, x + width, y + height / 2], fill=c)
            return
        if face in ("joy", "fun"):
            draw.chord([x - w, y - 0.16 * u, x + w, y + 0.16 * u], 0, 180, fill=c)
        elif face == "neutral":
            draw.arc([x - w * 0.8, y - 0.12 * u, x + w * 0.8, y + 0.06 * u], 30, 150, fill=c, width=s + 1)
        elif face == "angry":
            draw.line(
                [(x - w * 0.7, y + 0.03 * u), (x, y - 0.02 * u), (x + w * 0.7, y + 0.03 * u)], fill=c, width=s + 1
            )
        elif face == "sorrow":
            draw.arc([x - w * 0.7, y, x + w * 0.7, y + 0.2 * u], 205, 335, fill=c, width=s + 1)
        elif face == "surprised":
            r = 0.08 * u
            draw.ellipse([x - r, y - r, x + r, y + r], outline=c, width=s + 1)
        elif face == "thinking":
            draw.line([(x - w * 0.2, y + 0.02 * u), (x + w * 0.6, y - 0.03 * u)], fill=c, width=s + 1)
        elif face == "listening":
            r = 0.045 * u
            draw.ellipse([x - r * 1.6, y - r, x + r * 1.6, y + r], fill=c)
        else:  # sleeping
            draw.line([(x - w * 0.3, y), (x + w * 0.3, y)], fill=c, width=s)

    def _extras(self, draw: ImageDraw.ImageDraw, face: str, eye_y: float, eye_r: float) -> None:
        c, s, u, cx = self.colour, self.stroke, self.u, self.cx
        if face == "listening":  # sound waves by the ears
            for side in (-1, 1):
                for k in (1, 2):
                    r = 0.1 * u * k
                    x = cx + side * 0.85 * u
                    box = [x - r, eye_y + 0.1 * u - r, x + r, eye_y + 0.1 * u + r]
                    start, end = (120, 240) if side < 0 else (300, 60)
                    draw.arc(box, start, end, fill=c, width=s)
        elif face == "thinking":  # ... above the right eye
            for k in range(3):
                r = 0.025 * u + k * 0.012 * u
                x = cx + 0.62 * u + k * 0.13 * u
                y = eye_y - 0.16 * u - k * 0.08 * u
                draw.ellipse([x - r, y - r, x + r, y + r], fill=c)
        elif face == "sleeping":  # z z
            for k, size in enumerate((0.1, 0.14)):
                x = cx + 0.62 * u + k * 0.17 * u
                y = eye_y - 0.18 * u - k * 0.15 * u
                d = size * u
                draw.line([(x, y), (x + d, y), (x, y + d), (x + d, y + d)], fill=c, width=s)
        elif face == "sorrow":  # a tear
            x, y = cx - 0.42 * u - eye_r * 0.3, eye_y + eye_r * 1.6
            r = 0.04 * u
            draw.ellipse([x - r, y, x + r, y + 2.2 * r], fill=c)


class FolderFaces:
    """Faces from image files: ``<face>.png``, optionally ``<face>-blink.png`` and ``<face>-talk.png``.

    A face without its own image falls back to ``neutral``; the images are fitted into the display and
    converted to its colour mode once, at start.
    """

    def __init__(self, folder: Path, size: tuple[int, int], mode: str = "RGB", background: str = "#000000") -> None:
        self.size = size
        self.mode = mode
        self.images: dict[str, Image.Image] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                continue
            try:
                with Image.open(path) as raw:
                    raw.load()
                    picture = raw.convert("RGBA")
            except (OSError, ValueError) as exc:
                raise FaceImageError(f"{path}: not a readable image ({exc})") from None
            fitted = ImageOps.contain(picture, size)
            canvas = Image.new("RGBA", size, background)
            canvas.alpha_composite(fitted, ((size[0] - fitted.width) // 2, (size[1] - fitted.height) // 2))
            self.images[path.stem.lower()] = canvas.convert("RGB").convert(mode)
        if not self.faces():
            raise FaceImageError(f"{folder}: no face images (expected e.g. neutral.png, joy.png)")

    def faces(self) -> tuple[str, ...]:
        return tuple(n for n in self.images if not n.endswith(("-blink", "-talk")))

    def render(self, look: Look) -> Image.Image:
        face = look.face if look.face in self.images else "neutral"
        if face not in self.images:
            face = self.faces()[0]
        variant = None
        if look.mouth > 0.3 and f"{face}-talk" in self.images:
            variant = f"{face}-talk"
        elif look.eyes < 0.5 and f"{face}-blink" in self.images:
            variant = f"{face}-blink"
        return self.images[variant or face].copy()


class FaceImageError(Exception):
    """A face image folder cannot be used."""


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
