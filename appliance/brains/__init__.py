"""Where replies come from: the ``Brain`` protocol and its implementations."""

from appliance.brains.base import Brain, Message, ReplyChunk, Tag, Transcript, TurnRequest, Utterance

__all__ = ["Brain", "Message", "ReplyChunk", "Tag", "Transcript", "TurnRequest", "Utterance"]
