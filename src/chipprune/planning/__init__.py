"""Planning: how many channels each group keeps, from a sparsity (paper strings, one ratio, plan
files), a MAC budget, or a latency budget measured on this machine."""

from .latency_search import parse_latency_target, plan_for_latency, plan_for_latency_budget
from .latency_table import LatencyModel, LatencyTable, LayerShape
from .macs import plan_for_macs
from .plan import Plan, channels_to_keep, keep_counts, plan_from_keep, size_after
from .request import PlanRequest, make_plan
from .sparsity import parse_sparsity, plan_for_sparsity, plan_from_patterns, ratios_for

__all__ = [
    "LatencyModel", "LatencyTable", "LayerShape", "Plan", "PlanRequest", "channels_to_keep", "keep_counts", "make_plan",
    "parse_latency_target", "parse_sparsity", "plan_for_latency", "plan_for_latency_budget", "plan_for_macs",
    "plan_for_sparsity", "plan_from_keep", "plan_from_patterns", "ratios_for", "size_after",
]
