"""Where replies come from: the ``Brain`` protocol and its implementations."""

from appliance.turns import Brain, Message, ReplyChunk, Tag, Transcript, TurnRequest, Utterance

__all__ = ["Brain", "Message", "ReplyChunk", "Tag", "Transcript", "TurnRequest", "Utterance"]
