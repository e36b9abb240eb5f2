"""Measuring a model: parameters, MACs, accuracy, BatchNorm re-estimation, and latency."""

from .latency import Comparison, Latency, compare_latency, compare_models, measure_latency, model_runner, onnx_runner
from .metrics import check_labels, correct_flags, count_macs, count_params, evaluate, recalibrate_batchnorm

__all__ = [
    "Comparison", "Latency", "compare_latency", "compare_models", "measure_latency", "model_runner", "onnx_runner",
    "check_labels", "correct_flags", "count_macs", "count_params", "evaluate", "recalibrate_batchnorm",
]
