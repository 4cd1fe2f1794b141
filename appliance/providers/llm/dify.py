"""Dify ``/v1/chat-messages`` in streaming mode (chat, agent and chatflow apps).

Dify keeps the conversation on its side: we send only the new query and remember which Dify conversation
belongs to which of ours. Tools live in the Dify app, so this provider ignores ours; images are uploaded
to ``/files/upload`` and referenced by id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from appliance.errors import ProviderBadReply
from appliance.providers.http_errors import (
    StreamProgress,
    check_response,
    http_client,
    parse_json,
    provider_errors,
    sse_events,
    status_error,
    warm_http,
)
from appliance.providers.llm.base import Image, LLMEvent, ToolRound, ToolSpec
from appliance.providers.sdk_errors import Warmth
from appliance.turns import Message

_TEXT_EVENTS = {"message", "agent_message"}


class DifyChat:
    name = "dify-llm"

    def __init__(
        self,
        api_key: str | None,
        base_url: str,
        timeout: float = 30.0,
        user: str = "appliance",
        inputs: dict[str, str] | None = None,
    ) -> None:
        self.api_key = api_key or ""
        self.base_url = base_url.rstrip("/")
        self.user = user
        self.inputs = dict(inputs or {})
        self._client = http_client(timeout)
        self.warmth = Warmth()
        self._conversations: dict[str, str] = {}  # ours → Dify's

    async def stream(
        self,
        system: str,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        rounds: Sequence[ToolRound] = (),
        images: Sequence[Image] = (),
        conversation_id: str = "",
    ) -> AsyncIterator[LLMEvent]:
        query = next((m.content for m in reversed(messages) if m.role == "user"), "")
        if rounds:  # tools are Dify's own; nothing of ours to feed back
            return
        body: dict[str, Any] = {
            "inputs": self.inputs,
            "query": query,
            "response_mode": "streaming",
            "conversation_id": self._conversations.get(conversation_id, ""),
            "user": self.user,
        }
        if images:
            body["files"] = [
                {"type": "image", "transfer_method": "local_file", "upload_file_id": await self._upload(img)}
                for img in images
            ]
        progress = StreamProgress()
        finished = False
        self.warmth.touch()
        with provider_errors(self.name, progress):
            async with self._client.stream(
                "POST",
                f"{self.base_url}/chat-messages",
                json=body,
                headers={"Authorization": f"Bearer {self.api_key}"},
            ) as response:
                await check_response(self.name, response)
                async for _, data in sse_events(response):
                    progress.started = True
                    event = parse_json(self.name, data)
                    kind = event.get("event")
                    if event.get("conversation_id") and conversation_id:
                        self._conversations[conversation_id] = event["conversation_id"]
                    if kind in _TEXT_EVENTS:
                        if event.get("answer"):
                            yield event["answer"]
                    elif kind == "message_end":
                        finished = True
                    elif kind == "error":
                        status = int(event.get("status") or 500)
                        raise status_error(self.name, status, f"{event.get('code', '')}: {event.get('message', '')}")
        if not finished:
            raise ProviderBadReply(self.name, "stream ended before the reply was complete")

    async def _upload(self, image: Image) -> str:
        """Dify takes pictures by reference: upload first (``/files/upload``), then send the file id."""
        suffix = "png" if image.mime_type == "image/png" else "jpg"
        self.warmth.touch()
        with provider_errors(self.name):
            response = await self._client.post(
                f"{self.base_url}/files/upload",
                data={"user": self.user},
                files={"file": (f"camera.{suffix}", image.data, image.mime_type)},
                headers={"Authorization": f"Bearer {self.api_key}"},
            )
            await check_response(self.name, response)
            file_id = response.json().get("id")
        if not isinstance(file_id, str) or not file_id:
            raise ProviderBadReply(self.name, "file upload answered without an id")
        return file_id

    async def warm(self) -> None:
        await warm_http(self._client, self.base_url, self.warmth)

    async def aclose(self) -> None:
        await self._client.aclose()
