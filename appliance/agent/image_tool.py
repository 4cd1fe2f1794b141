"""Built-in tool ``generate_image``: a Gemini image model draws what the model asks for, and the robot's
display shows it for a while ("show me a cat in a space suit")."""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
from collections.abc import Callable
from typing import Any

from appliance.agent.tools import Tool, ToolError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemini-2.5-flash-image"
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
MAX_IMAGE_BYTES = 20_000_000
MAX_PIXELS = 40_000_000  # a picture bigger than this is refused before it is decoded
_DATA_URL = re.compile(r"data:(image/(?:png|jpeg|webp));base64,([A-Za-z0-9+/=\s]+)")


def picture_from_reply(reply: Any) -> tuple[bytes, str]:
    """The first image of a generateContent reply: an ``inlineData`` part, or a data URL in a text part (as some
    compatible gateways answer). Raises ToolError saying why there is none."""
    if not isinstance(reply, dict):
        raise ToolError("the image service answered something that is not JSON")
    feedback = reply.get("promptFeedback") or {}
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        raise ToolError(f"the image service refused the request ({feedback['blockReason']})")
    texts: list[str] = []
    for candidate in reply.get("candidates") or ():
        content = candidate.get("content") if isinstance(candidate, dict) else None
        for part in (content or {}).get("parts") or ():
            if not isinstance(part, dict):
                continue
            inline = part.get("inlineData") or part.get("inline_data")
            if isinstance(inline, dict) and str(inline.get("mimeType", inline.get("mime_type", ""))).startswith(
                "image/"
            ):
                return _decoded(inline.get("data")), str(inline.get("mimeType") or inline.get("mime_type"))
            if isinstance(part.get("text"), str):
                found = _DATA_URL.search(part["text"])
                if found:
                    return _decoded(found.group(2)), found.group(1)
                texts.append(part["text"])
        reason = candidate.get("finishReason") if isinstance(candidate, dict) else None
        if reason and reason not in ("STOP", "MAX_TOKENS"):
            raise ToolError(f"the image service stopped without a picture ({reason})")
    said = " ".join(" ".join(texts).split())[:200]
    raise ToolError(f"the image service sent no picture{': ' + said if said else ''}")


def _decoded(data: Any) -> bytes:
    if not isinstance(data, str) or not data:
        raise ToolError("the image service sent an empty picture")
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ToolError("the image service sent a picture too large to show")
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raise ToolError("the image service sent a picture that is not base64") from None
    check_picture(raw)
    return raw


def check_picture(raw: bytes) -> None:
    """Refuse what a display could not show: not an image, or so large that decoding it would exhaust memory."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as picture:
            if picture.width * picture.height > MAX_PIXELS:
                raise ToolError(f"the picture is {picture.width}x{picture.height}, too large to show")
            picture.verify()
    except ToolError:
        raise
    except Image.DecompressionBombError:
        raise ToolError("the picture is too large to show") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a broken file; all mean the same here
        raise ToolError(f"the picture cannot be read ({type(exc).__name__})") from None


def image_tool(
    show: Callable[[bytes, float, str], None],
    api_key: str | None,
    *,
    model: str | None = None,
    base_url: str | None = None,
    seconds: float = 20.0,
    name: str = "generate_image",
    description: str = "",
    progress: str | None = None,
    timeout: float = 60.0,
) -> Tool:
    url = f"{(base_url or DEFAULT_BASE_URL).rstrip('/')}/v1beta/models/{model or DEFAULT_MODEL}:generateContent"

    async def runner(arguments: dict[str, Any]) -> Any:
        import httpx

        prompt = arguments.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ToolError("say what to draw as 'prompt'")
        body = {
            "contents": [{"parts": [{"text": prompt.strip()[:2000]}]}],
            "generationConfig": {"responseModalities": ["IMAGE"]},
        }
        try:
            async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
                response = await client.post(url, json=body, headers={"x-goog-api-key": api_key or ""})
        except httpx.HTTPError as exc:
            raise ToolError(f"cannot reach the image service: {type(exc).__name__}") from None
        if not response.is_success:
            raise ToolError(f"the image service answered HTTP {response.status_code}")
        if len(response.content) > MAX_IMAGE_BYTES * 2:
            raise ToolError("the image service sent a reply too large to show")
        try:
            reply = response.json()
        except ValueError:
            raise ToolError("the image service answered something that is not JSON") from None
        picture, _ = picture_from_reply(reply)
        show(picture, seconds, prompt.strip()[:200])
        log.info("showing a generated picture (%d bytes) for %g s", len(picture), seconds)
        return "The picture is now on the robot's display. Tell the user to look at it; do not describe it in detail."

    schema = {
        "type": "object",
        "properties": {"prompt": {"type": "string", "description": "what the picture should show, in detail"}},
        "required": ["prompt"],
    }
    about = description or "Draw a picture and show it on the robot's display, when the user asks to see something."
    return Tool(name, about, schema, runner, None, progress, timeout, source="config")
