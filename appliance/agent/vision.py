"""Stills for vision-capable models, taken when the model asks with ``[vision:camera]``.

picamera2 on a Pi camera, OpenCV (V4L2) for a USB camera, or a fixed image file in simulation. The
camera libraries block, so a capture runs in a worker thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import trio

from appliance.providers.llm.base import Image

log = logging.getLogger(__name__)


class CameraError(RuntimeError):
    """No still could be taken; the message says why."""


class Camera(Protocol):
    name: str

    async def capture(self) -> Image: ...


def _mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    raise CameraError("image is neither JPEG nor PNG")


class FileCamera:
    """Always returns the same picture: simulation and tests."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def capture(self) -> Image:
        try:
            data = await trio.Path(self.path).read_bytes()
        except OSError as exc:
            raise CameraError(f"cannot read {self.path}: {exc.strerror}") from None
        return Image(data, _mime(data))


class Picamera2Camera:
    name = "picamera2"

    def __init__(self, width: int = 1024, height: int = 768) -> None:
        self.size = (width, height)

    def _grab(self) -> bytes:
        import io

        from picamera2 import Picamera2

        camera = Picamera2()
        try:
            camera.configure(camera.create_still_configuration(main={"size": self.size}))
            camera.start()
            buf = io.BytesIO()
            camera.capture_file(buf, format="jpeg")
            return buf.getvalue()
        finally:
            camera.close()

    async def capture(self) -> Image:
        try:
            return Image(await trio.to_thread.run_sync(self._grab), "image/jpeg")
        except Exception as exc:
            raise CameraError(f"picamera2: {exc}") from exc


class OpenCVCamera:
    name = "opencv"

    def __init__(self, device: int | str = 0, width: int = 1024) -> None:
        self.device, self.width = device, width

    def _grab(self) -> bytes:
        import cv2

        capture = cv2.VideoCapture(self.device)
        try:
            if not capture.isOpened():
                raise CameraError(f"cannot open camera {self.device!r}")
            for _ in range(3):  # the first frames of a V4L2 camera are often dark while exposure settles
                ok, frame = capture.read()
            if not ok:
                raise CameraError(f"camera {self.device!r} returned no frame")
        finally:
            capture.release()
        height = int(frame.shape[0] * self.width / frame.shape[1])
        frame = cv2.resize(frame, (self.width, height))
        ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise CameraError("JPEG encoding failed")
        return encoded.tobytes()

    async def capture(self) -> Image:
        try:
            return Image(await trio.to_thread.run_sync(self._grab), "image/jpeg")
        except CameraError:
            raise
        except Exception as exc:
            raise CameraError(f"opencv: {exc}") from exc


def make_camera(kind: str, image: Path | None = None, device: int | str = 0) -> Camera:
    """``kind``: auto | picamera2 | opencv | file."""
    if kind == "file" or (kind == "auto" and image is not None):
        if image is None:
            raise ValueError("vision.image: the file camera needs an image path")
        return FileCamera(image)
    if kind in ("picamera2", "auto"):
        try:
            import picamera2  # noqa: F401
        except ImportError:
            if kind == "picamera2":
                raise ValueError("vision.camera = 'picamera2' but picamera2 is not installed") from None
        else:
            return Picamera2Camera()
    return OpenCVCamera(device)


def camera_tool(camera: Camera) -> Any:
    """A ``look`` tool: the model decides when to see, the picture goes up with the next request."""
    from appliance.agent.tools import Tool, ToolError

    async def look(arguments: dict[str, Any]) -> Image:
        try:
            return await camera.capture()
        except CameraError as exc:
            raise ToolError(f"The camera is not working: {exc}") from None

    return Tool(
        "look",
        "Take a picture with the robot's camera to see what is in front of it.",
        {"type": "object", "properties": {}},
        look,
        None,
        None,
        15.0,
        source="camera",
    )
