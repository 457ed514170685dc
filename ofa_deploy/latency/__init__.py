"""Latency models and their builder: every estimate of a subnet's latency on a target comes from here.

One protocol (:mod:`.base`: ``predict(gene rows) -> ms``, labelled with its ``source`` and
``basis``) and its implementations: per-block tables of measured tuned code (:mod:`.measured`,
built by :mod:`.profile`, ``ofa-deploy profile``, corrected end to end by :mod:`.calibration`), the
analytic roofline (:mod:`.roofline`) with efficiencies learned on a measured target
(:mod:`.learned`, ``profile --estimate-from``), and the VTA model (:mod:`.vta`).
:func:`latency_model` (:mod:`.choose`) picks one for a target; all of them are table lookups over
block variants (:mod:`.tables`). The builder (:mod:`.profile`) times through ``ofa_deploy.compile``;
using a model needs no TVM. Search imports this package; it
imports neither search, deploy nor the CLI.
"""

from .base import SOURCES, LatencyModel, TableLatencyModel
from .choose import latency_model, lookup_target
from .roofline import (CPU_EFFICIENCY, CUDA_EFFICIENCY, Hardware, RooflineEfficiency, hardware_from_spec,
                       roofline_layer_ms, spec_to_hardware)
from .vta import BOARDS, Board, ConvShape, VtaConfig, get_board, plan_conv, vta_report

__all__ = [
    "BOARDS", "Board", "CPU_EFFICIENCY", "CUDA_EFFICIENCY", "ConvShape", "Hardware", "LatencyModel",
    "RooflineEfficiency", "SOURCES", "TableLatencyModel", "VtaConfig", "get_board", "hardware_from_spec",
    "latency_model", "lookup_target", "plan_conv", "roofline_layer_ms", "spec_to_hardware", "vta_report",
]
