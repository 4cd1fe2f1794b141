"""Firmware for talking robots."""

__version__ = "0.1.0"
