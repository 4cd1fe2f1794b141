"""The local control API: manage the robot from a laptop or phone on the same network."""
