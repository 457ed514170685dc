"""Analytic roofline latency for CPU and CUDA targets that have no measured latency model.

Per fused layer (the graph ``count_costs`` describes: BN folded, activation fused)::

    time = max(ops / (peak_gflops * eff_compute[op]), bytes / (peak_gbps * eff_mem)) + overhead

The efficiencies say how far below the datasheet peak compiled code runs for each kind of layer.
The named guesses below are chosen from the usual behaviour of tuned TVM code at batch 1; for
a target without a device, :mod:`.learned` replaces them with efficiencies fitted to a profiled
target's measured tables (``estimated_model.json``), and they remain the fallback (and the fit's
prior). Results are labelled ``estimated`` everywhere, and a warning says so once per model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.search_space.costs import LayerCost

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    """The few numbers the analytic models need about a device (from the target registry)."""

    name: str
    kind: str  # "cpu" | "cuda" | "vta"
    peak_gflops: float  # fp32 peak of the whole device (all cores)
    peak_gbps: float  # DRAM bandwidth, GB/s


KINDS = ("cpu", "cuda", "vta")


def hardware_from_spec(name: str, kind: str, peak_gflops_fp32: float, peak_gbps: float) -> Hardware:
    """The adapter: the four registry fields the analytic models use, validated."""
    if kind not in KINDS:
        raise OfaDeployError(f"target {name!r}: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    if not (peak_gflops_fp32 and peak_gflops_fp32 > 0 and peak_gbps and peak_gbps > 0):
        raise OfaDeployError(f"target {name!r}: registry gives no peak GFLOP/s / GB/s, cannot estimate latency")
    return Hardware(str(name), kind, float(peak_gflops_fp32), float(peak_gbps))


def spec_to_hardware(spec: Any) -> Hardware:
    """Read a registry ``TargetSpec`` (or any object with the same fields, e.g. a test fake)."""
    return hardware_from_spec(spec.name, spec.kind, spec.peak_gflops_fp32, spec.peak_gbps)


@dataclass(frozen=True)
class RooflineEfficiency:
    """Fraction of peak reached per layer kind, plus a fixed per-layer cost."""

    conv: float = 0.40  # dense 1x1 / kxk conv: GEMM-like; tuned TVM code reaches ~30-60 % of peak
    dwconv: float = 0.10  # depthwise: one MAC per weight load, little reuse, short vectors
    se: float = 0.05  # squeeze-excite: pooling + two tiny matvecs, dominated by loop overheads
    pool: float = 0.10  # global pooling: a reduction, memory bound in practice
    linear: float = 0.20  # batch-1 classifier matvec: memory bound in practice
    act: float = 0.25  # a standalone elementwise op (h-swish left to the ARM cores of a VTA board)
    mem: float = 0.60  # fraction of peak DRAM bandwidth a streaming kernel sustains
    overhead_us: float = 5.0  # per fused layer: operator dispatch, thread-pool fork/join

    def compute(self, op: str) -> float:
        return getattr(self, op)


CPU_EFFICIENCY = RooflineEfficiency()
# A GPU at batch 1: kernels are small and launch-bound; the per-layer cost is the launch latency.
CUDA_EFFICIENCY = RooflineEfficiency(conv=0.25, dwconv=0.05, se=0.02, pool=0.05, linear=0.10, act=0.2,
                                     mem=0.70, overhead_us=4.0)
HSWISH_OPS = 4  # x * relu6(x + 3) / 6: add, clip, multiply, scale per element


def layer_ops(layer: LayerCost) -> float:
    """Operations of a fused layer: 2 x MACs, or one per element read for MAC-free pooling."""
    return 2.0 * layer.macs if layer.macs else float(layer.act_read)


def roofline_ms(ops: float, nbytes: float, hw: Hardware, eff_compute: float, eff: RooflineEfficiency) -> float:
    """One roofline evaluation in milliseconds (without the per-layer overhead)."""
    t_compute = ops / (hw.peak_gflops * 1e9 * eff_compute)
    t_memory = nbytes / (hw.peak_gbps * 1e9 * eff.mem)
    return 1e3 * max(t_compute, t_memory)


def roofline_layer_ms(layer: LayerCost, hw: Hardware, eff: RooflineEfficiency = CPU_EFFICIENCY,
                      dtype_bytes: int = 4) -> float:
    """Latency of one fused layer (ms); fused activations are free (bandwidth-bound tails)."""
    return roofline_ms(layer_ops(layer), layer.bytes(dtype_bytes), hw, eff.compute(layer.op), eff) + eff.overhead_us * 1e-3


def efficiency_for(kind: str) -> RooflineEfficiency:
    return CUDA_EFFICIENCY if kind == "cuda" else CPU_EFFICIENCY
