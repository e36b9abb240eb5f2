"""Pilot: sweep compression levels on the user's data, with paired accuracy intervals and measured
latency, and recommend a safe level; or chart each layer's sensitivity. ``sweep_any``: the same
sweep for any model against the user's own measure."""

from .any_model import SweepPoint, sweep_any, sweep_table
from .sensitivity import sensitivity
from .stats import paired_drop_interval, recommend, wilson_interval
from .sweep import PilotSettings, run_pilot

__all__ = ["PilotSettings", "SweepPoint", "sweep_any", "sweep_table", "paired_drop_interval", "recommend", "run_pilot", "sensitivity", "wilson_interval"]
