"""Latency models for search: one protocol, analytic implementations (roofline, VTA) behind it."""

from .base import SOURCES, LatencyModel, TableLatencyModel
from .roofline import CPU_EFFICIENCY, CUDA_EFFICIENCY, Hardware, RooflineEfficiency, roofline_layer_ms
from .targets import hardware_from_spec, latency_model, lookup_target, spec_to_hardware
from .vta import BOARDS, Board, ConvShape, VtaConfig, get_board, plan_conv, vta_report

__all__ = [
    "BOARDS", "Board", "CPU_EFFICIENCY", "CUDA_EFFICIENCY", "ConvShape", "Hardware", "LatencyModel",
    "RooflineEfficiency", "SOURCES", "TableLatencyModel", "VtaConfig", "get_board", "hardware_from_spec",
    "latency_model", "lookup_target", "plan_conv", "roofline_layer_ms", "spec_to_hardware", "vta_report",
]
