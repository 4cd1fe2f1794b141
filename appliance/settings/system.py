"""``[supervisor]`` and ``[log]``: how the process keeps its subsystems running and what it says."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from appliance.settings_base import Section


class SupervisorConfig(Section):
    restart_initial_delay: float = Field(default=0.5, gt=0, description="first restart delay (s)")
    restart_max_delay: float = Field(default=30.0, gt=0, description="restart delays double up to this (s)")
    max_failures: int = Field(default=5, ge=1, description="a required subsystem failing this often ends the process")
    failure_window: float = Field(default=120.0, gt=0, description="failures older than this are forgotten (s)")
    stop_timeout: float = Field(default=1.5, gt=0, description="time given to subsystems on shutdown (s)")


class LogConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    status_line: Literal["auto", "on", "off"] = Field(
        default="auto", description="the live one-line status; auto = when stderr is a terminal"
    )
