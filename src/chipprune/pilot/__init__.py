"""Pilot: sweep compression levels on the user's data, with paired accuracy intervals and measured
latency, and recommend a safe level; or chart each layer's sensitivity."""

from .sensitivity import sensitivity
from .stats import paired_drop_interval, recommend, wilson_interval
from .sweep import PilotSettings, run_pilot

__all__ = ["PilotSettings", "paired_drop_interval", "recommend", "run_pilot", "sensitivity", "wilson_interval"]
