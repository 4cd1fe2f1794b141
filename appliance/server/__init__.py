"""``appliance serve``: our reply pipeline served over the AIAvatarKit WebSocket protocol."""
