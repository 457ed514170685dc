"""Analytic model of VTA on Zynq boards (VTA left TVM in apache/tvm PR 17542, so no simulator).

VTA (Moreau et al., "A Hardware-Software Blueprint for Flexible Deep Learning Specialization",
IEEE Micro 2019) is a GEMM core fed by load/store DMA modules through on-chip buffers, with
decoupled access-execute so loads, compute and stores overlap. What we model and where it comes from:

* Configuration: the default ``vta_config.json`` (apache/tvm-vta ``config/``): int8 inputs and
  weights, int32 accumulators, GEMM intrinsic BATCH 1 x BLOCK_IN 16 x BLOCK_OUT 16 (256 MACs per
  cycle: "one matrix multiply per cycle", TVM docs, VTA Hardware Guide), buffers UOP 32 KiB,
  INP 32 KiB, WGT 256 KiB, ACC 128 KiB.
* Per board (clock and AXI width of the fabric, the ARM cores' peak, DRAM bandwidth): the target
  registry's ``vta-*`` entries (``targets/builtin.py``, sources cited there), the one place these
  numbers live; :func:`get_board` reads them.
* Per-instruction fixed cycle costs: the static cost model ``config/vta_cost.py`` (GEMM 80,
  ALU 46, LOAD/STORE 150 cycles per instruction, plus one cycle per micro-op / vector).
* Placement: VTA runs dense convolutions; depthwise convs, squeeze-excite, pooling, the classifier
  and h-swish (VTA's ALU has no such op) run on the board's ARM cores, as does the first conv
  (3 input channels) and what follows global pooling, like TVM's VTA tutorials (graph_pack from
  after the stem to the global pool). :func:`arm_reason` is that rule, used by ``compile`` too.
  ARM layers use the roofline of :mod:`.roofline` on int8 tensors.
* Tiling: per conv we enumerate tiles (output rows x cols x output-channel blocks x input-channel
  blocks) that fit *half* of each buffer (TVM's VTA schedules use two virtual threads for double
  buffering), count DRAM traffic with re-reads (weights once per spatial tile, inputs once per
  output-channel tile, unless one of them stays resident), GEMM cycles (channels ceil-divided by
  16), load/store cycles from the AXI width, and overlap them with a double-buffer max() model:
  ``cycles = first load + max(other loads, gemm + alu, other stores, dram) + last store``. The
  cheapest tile wins.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.search_space.costs import LayerCost
from ofa_deploy.targets import TargetSpec, all_targets, list_targets

from .roofline import CPU_EFFICIENCY, HSWISH_OPS, Hardware, RooflineEfficiency, layer_ops, roofline_ms


@dataclass(frozen=True)
class VtaConfig:
    """VTA hardware parameters (defaults: the stock vta_config.json and vta_cost.py)."""

    block_in: int = 16  # LOG_BLOCK 4
    block_out: int = 16  # LOG_BLOCK 4
    inp_bytes: int = 1  # LOG_INP_WIDTH 3 (int8)
    wgt_bytes: int = 1  # LOG_WGT_WIDTH 3 (int8)
    acc_bytes: int = 4  # LOG_ACC_WIDTH 5 (int32)
    uop_buf: int = 32 * 1024  # LOG_UOP_BUFF_SIZE 15
    inp_buf: int = 32 * 1024  # LOG_INP_BUFF_SIZE 15
    wgt_buf: int = 256 * 1024  # LOG_WGT_BUFF_SIZE 18
    acc_buf: int = 128 * 1024  # LOG_ACC_BUFF_SIZE 17
    uop_bytes: int = 4  # one micro-op is a 32-bit word
    gemm_insn_cycles: int = 80  # vta_cost.py gemm_cost: x + 80
    alu_insn_cycles: int = 46  # vta_cost.py alu_imm_cost: x + 46 (alu_cost: 2x + 46 for tensor-tensor)
    dma_insn_cycles: int = 150  # vta_cost.py load_*/store_cost: x + 150
    requant_alu_ops: int = 3  # shift right, max (ReLU / clip low), min (clip high) per output tile
    virtual_threads: int = 2  # double buffering: each thread owns half of every buffer
    layer_overhead_us: float = 20.0  # runtime per offloaded layer (insn push, cache flush, sync); assumed

    @property
    def macs_per_cycle(self) -> int:
        return self.block_in * self.block_out  # BATCH = 1

    def capacity(self) -> dict[str, int]:
        """Buffer capacities per virtual thread, in the units tiles are counted in."""
        vt = self.virtual_threads
        return {
            "inp": self.inp_buf // (self.block_in * self.inp_bytes) // vt,  # input vectors
            "wgt": self.wgt_buf // (self.block_in * self.block_out * self.wgt_bytes) // vt,  # weight blocks
            "acc": self.acc_buf // (self.block_out * self.acc_bytes) // vt,  # accumulator vectors
            "uop": self.uop_buf // self.uop_bytes // vt,  # micro-ops
        }


@dataclass(frozen=True)
class Board:
    """A Zynq board running VTA in its FPGA fabric next to ARM cores (built from a registry entry)."""

    name: str  # the target name, e.g. "vta-ultra96"
    fpga_mhz: float
    axi_bits: int
    cpu: Hardware  # the ARM cores: fp32 NEON peak and the DRAM bandwidth they share with the fabric
    cpu_desc: str  # e.g. "4x cortex-a53 (aarch64)"
    vta: VtaConfig = field(default_factory=VtaConfig)

    @classmethod
    def from_spec(cls, spec: TargetSpec) -> "Board":
        """The board a registry entry describes: fabric from ``spec.vta``, ARM and DRAM from its peaks."""
        if spec.kind != "vta" or spec.vta is None or spec.host is None:
            raise OfaDeployError(f"target {spec.name!r}: not a VTA board (kind {spec.kind!r}); "
                                 f"VTA boards: {', '.join(list_targets('vta'))}")
        if not (spec.peak_gflops_fp32 and spec.peak_gbps):
            raise OfaDeployError(f"target {spec.name!r}: a VTA board needs peak_gflops_fp32 (its ARM cores) and "
                                 "peak_gbps (its DRAM) in the registry")
        cpu = Hardware(spec.host_spec().name, "cpu", float(spec.peak_gflops_fp32), float(spec.peak_gbps))
        return cls(spec.name, spec.vta.clock_mhz, spec.vta.axi_bits, cpu,
                   f"{spec.cores}x {spec.host.get('mcpu', '?')} ({spec.arch})")

    @property
    def dram_gbps(self) -> float:
        return self.cpu.peak_gbps

    @property
    def peak_gops(self) -> float:
        return 2 * self.vta.macs_per_cycle * self.fpga_mhz * 1e-3


class _RegistryBoards(Mapping[str, Board]):
    """Read-only view of the registry's ``vta`` targets as :class:`Board` objects.

    A view rather than a copy so a board registered (or overridden) with ``register_target``
    is seen here too, and no figure is ever held twice.
    """

    def __getitem__(self, name: str) -> Board:
        spec = all_targets().get(name)
        if spec is None or spec.kind != "vta":
            raise KeyError(name)
        return Board.from_spec(spec)

    def __iter__(self) -> Iterator[str]:
        return iter(list_targets("vta"))

    def __len__(self) -> int:
        return len(list_targets("vta"))


BOARDS: Mapping[str, Board] = _RegistryBoards()


def get_board(name: str) -> Board:
    if name not in BOARDS:
        raise OfaDeployError(f"target: unknown VTA board {name!r}; known: {', '.join(sorted(BOARDS))}")
    return BOARDS[name]


# -- convolutions on VTA ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvShape:
    cin: int
    h: int
    w: int
    cout: int
    ho: int
    wo: int
    kernel: int
    stride: int
    residual: bool  # the shortcut add is fused: its tensor is loaded and added on VTA's ALU

    @classmethod
    def from_layer(cls, layer: LayerCost) -> "ConvShape":
        (cin, h, w), (cout, ho, wo) = layer.in_shape, layer.out_shape
        kernel = int(round(math.sqrt(layer.weight_elems / (cout * cin))))
        stride = max(1, int(round(h / ho)))
        return cls(cin, h, w, cout, ho, wo, kernel, stride, layer.act_read > cin * h * w)


@dataclass(frozen=True)
class ConvPlan:
    """The chosen tiling of one conv and its modelled cost."""

    tile: tuple[int, int, int, int]  # (output rows, output cols, out-channel blocks, in-channel blocks)
    n_tiles: tuple[int, int, int, int]
    dram_bytes: int  # modelled traffic, re-reads included
    compulsory_bytes: int  # each tensor moved once (padded to 16 channels)
    gemm_cycles: int
    alu_cycles: int
    load_cycles: float
    store_cycles: float
    cycles: float
    ms: float


def _candidates(n: int) -> np.ndarray:
    return np.unique([min(n, 1 << i) for i in range(max(1, n.bit_length()) + 1)] + [n])


@lru_cache(maxsize=None)
def plan_conv(shape: ConvShape, board: Board) -> ConvPlan:
    """Best tiling of a dense conv on VTA (vectorised over every candidate tile)."""
    v, s, k = board.vta, shape.stride, shape.kernel
    cap = v.capacity()
    ci_b, co_b = -(-shape.cin // v.block_in), -(-shape.cout // v.block_out)
    th, tw, tco, tci = (a.ravel() for a in np.meshgrid(_candidates(shape.ho), _candidates(shape.wo),
                                                       _candidates(co_b), _candidates(ci_b), indexing="ij"))
    in_h, in_w = (th - 1) * s + k, (tw - 1) * s + k
    inp_vec, wgt_blk, acc_vec, uops = in_h * in_w * tci, tco * tci * k * k, th * tw * tco, tw * tci * k * k
    fits = (inp_vec <= cap["inp"]) & (wgt_blk <= cap["wgt"]) & (acc_vec <= cap["acc"]) & (uops <= cap["uop"])
    n_h, n_w, n_co, n_ci = -(-shape.ho // th), -(-shape.wo // tw), -(-co_b // tco), -(-ci_b // tci)
    n_sp = n_h * n_w
    vec_b, blk_b = v.block_in * v.inp_bytes, v.block_in * v.block_out * v.wgt_bytes
    inp_all = n_sp * in_h * in_w * ci_b * vec_b  # every spatial tile's input (with halo), all channels
    wgt_all = co_b * ci_b * k * k * blk_b
    resident = n_ci == 1  # all input channels fit: one operand can stay on chip while the other streams
    # Loop order A (spatial tiles outer) keeps the input resident; B (channel tiles outer) the weights.
    traffic_a = np.where(resident, inp_all, inp_all * n_co) + wgt_all * n_sp
    traffic_b = np.where(resident, wgt_all, wgt_all * n_sp) + inp_all * n_co
    loads_a = np.where(resident, n_sp, n_sp * n_co * n_ci) + n_sp * n_co * n_ci
    loads_b = np.where(resident, n_co, n_sp * n_co * n_ci) + n_sp * n_co * n_ci
    use_a = traffic_a <= traffic_b
    load_bytes = np.where(use_a, traffic_a, traffic_b)
    n_loads = np.where(use_a, loads_a, loads_b)
    out_b = shape.ho * shape.wo * co_b * v.block_out * v.inp_bytes
    n_out = n_sp * n_co
    alu_per_tile = v.requant_alu_ops * (acc_vec + v.alu_insn_cycles)
    if shape.residual:  # LOAD the shortcut into ACC, then one tensor-tensor ALU add
        load_bytes = load_bytes + out_b
        n_loads = n_loads + n_out
        alu_per_tile = alu_per_tile + 2 * acc_vec + v.alu_insn_cycles
    axi = board.axi_bits / 8  # bytes per FPGA cycle
    dram = board.dram_gbps * 1e9 / (board.fpga_mhz * 1e6)  # bytes per FPGA cycle the DRAM can deliver
    gemm = n_h * th * n_w * tw * n_co * tco * n_ci * tci * k * k + n_sp * n_co * n_ci * v.gemm_insn_cycles
    alu = n_out * alu_per_tile
    load = load_bytes / axi + n_loads * v.dma_insn_cycles
    store = out_b / axi + n_out * v.dma_insn_cycles
    fill = (inp_vec * vec_b + wgt_blk * blk_b) / axi + 2 * v.dma_insn_cycles
    drain = acc_vec * v.block_out * v.inp_bytes / axi + v.dma_insn_cycles
    # Pipeline: the first tile's loads (fill) and the last tile's store (drain) cannot overlap with
    # anything; in between, loads, compute, stores and the DRAM each bound the steady state.
    steady = np.maximum.reduce([np.maximum(load - fill, 0), gemm + alu, np.maximum(store - drain, 0),
                                (load_bytes + out_b) / dram])
    cycles = fill + steady + drain
    cycles = np.where(fits, cycles, np.inf)
    best = int(np.lexsort((load_bytes, cycles))[0])
    compulsory = shape.h * shape.w * ci_b * vec_b + wgt_all + out_b + (out_b if shape.residual else 0)
    return ConvPlan(
        tile=(int(th[best]), int(tw[best]), int(tco[best]), int(tci[best])),
        n_tiles=(int(n_h[best]), int(n_w[best]), int(n_co[best]), int(n_ci[best])),
        dram_bytes=int(load_bytes[best] + out_b), compulsory_bytes=int(compulsory),
        gemm_cycles=int(gemm[best]), alu_cycles=int(alu[best]), load_cycles=float(load[best]),
        store_cycles=float(store[best]), cycles=float(cycles[best]),
        ms=float(cycles[best]) / (board.fpga_mhz * 1e3) + v.layer_overhead_us * 1e-3,
    )


# -- whole layers: placement, ARM fallback -----------------------------------------------------------
_ARM_OPS = {
    "dwconv": "depthwise conv (VTA's GEMM core has no depthwise mode)",
    "se": "squeeze-excite (pooling, two matvecs and a gate)",
    "pool": "global pooling (VTA graphs end before the global pool)",
    "linear": "classifier (after the global pool)",
}
HSWISH_ON_ARM = "h-swish (VTA's ALU has no such op)"


def arm_reason(layer: LayerCost, vta: VtaConfig = VtaConfig()) -> str | None:
    """Why VTA cannot run ``layer`` (``None``: it can, as an int8 GEMM conv).

    The model's one placement rule: dense convs with >= BLOCK_IN input channels before global
    pooling go to VTA, everything else to the ARM cores. ``compile`` reports it per layer too.
    """
    if layer.op != "conv":
        return _ARM_OPS.get(layer.op, f"{layer.op} (not a dense conv)")
    if layer.in_shape[0] < vta.block_in:
        return f"conv with {layer.in_shape[0]} input channels (< BLOCK_IN {vta.block_in})"
    if layer.in_shape[1] * layer.in_shape[2] <= 1:
        return "conv after the global pool (1x1 pixels)"
    return None


def on_vta(layer: LayerCost, vta: VtaConfig = VtaConfig()) -> bool:
    """Dense convs with >= BLOCK_IN input channels, before global pooling; the rest runs on ARM."""
    return arm_reason(layer, vta) is None


@dataclass(frozen=True)
class LayerEstimate:
    name: str
    device: str  # "vta" | "arm"
    ms: float
    ops: float
    dram_bytes: float  # modelled traffic (VTA: with re-reads; ARM: compulsory, int8)
    op: str = ""  # LayerCost.op
    act: str | None = None  # the fused activation (h-swish always runs on ARM)
    arm_reason: str | None = None  # why the layer runs on ARM (None: on VTA)


def estimate_layer(layer: LayerCost, act: str | None, board: Board,
                   eff: RooflineEfficiency = CPU_EFFICIENCY) -> LayerEstimate:
    """Latency of one fused layer on the board (ms), including an h-swish the ARM cores must run."""
    hswish_ops = HSWISH_OPS * layer.act_write if act == "h_swish" else 0.0
    reason = arm_reason(layer, board.vta)
    if reason is None:
        plan = plan_conv(ConvShape.from_layer(layer), board)
        # h-swish of a VTA conv runs on ARM fused into the consuming ARM layer (dw conv, pool), which
        # reads the tensor anyway: compute only, no extra traffic.
        extra = 1e3 * hswish_ops / (board.cpu.peak_gflops * 1e9 * eff.act)
        return LayerEstimate(layer.name, "vta", plan.ms + extra, 2.0 * layer.macs, plan.dram_bytes, layer.op, act)
    ops = layer_ops(layer) + hswish_ops
    ms = roofline_ms(ops, layer.bytes(1), board.cpu, eff.compute(layer.op), eff) + eff.overhead_us * 1e-3
    return LayerEstimate(layer.name, "arm", ms, 2.0 * layer.macs, layer.bytes(1), layer.op, act, reason)


def vta_layer_ms(board: Board, eff: RooflineEfficiency = CPU_EFFICIENCY):
    """A per-layer latency function for :class:`TableLatencyModel`."""
    return lambda layer, act: estimate_layer(layer, act, board, eff).ms


@dataclass(frozen=True)
class VtaReport:
    """Whole-network figures on a VTA board (all ``estimated``)."""

    board: str
    layers: tuple[LayerEstimate, ...]
    macs: int
    model_bytes: int  # count_costs int8 bytes (each tensor once)

    @property
    def latency_ms(self) -> float:
        return sum(l.ms for l in self.layers)

    @property
    def gops(self) -> float:
        """Achieved GOP/s: 2 x MACs / latency."""
        return 2 * self.macs / (self.latency_ms * 1e-3) / 1e9

    @property
    def intensity(self) -> float:
        """ops per byte of the deployed int8 graph (the cost model's definition)."""
        return 2 * self.macs / self.model_bytes

    @property
    def dram_intensity(self) -> float:
        """ops per byte actually moved, tiling re-reads included."""
        return 2 * self.macs / sum(l.dram_bytes for l in self.layers)

    @property
    def vta_time_fraction(self) -> float:
        return sum(l.ms for l in self.layers if l.device == "vta") / self.latency_ms

    def summary(self) -> dict[str, float | str]:
        return {"target": self.board, "latency_ms": round(self.latency_ms, 4), "gops": round(self.gops, 3),
                "intensity_int8": round(self.intensity, 3), "dram_intensity_int8": round(self.dram_intensity, 3),
                "vta_time_fraction": round(self.vta_time_fraction, 3), "source": "estimated"}


def vta_report(layers: list[tuple[LayerCost, str | None]], board: Board | str) -> VtaReport:
    """Estimate a network given as (layer, fused activation) pairs, e.g. from ``layers_with_acts``."""
    board = get_board(board) if isinstance(board, str) else board
    est = tuple(estimate_layer(layer, act, board) for layer, act in layers)
    return VtaReport(board.name, est, sum(l.macs for l, _ in layers), sum(l.bytes(1) for l, _ in layers))


# -- what `compile --target vta-*` records ---------------------------------------------------------
NO_VTA_BACKEND = "TVM 0.27 has no VTA backend (removed in apache/tvm PR 17542)"


def offload_report(layers: list[tuple[LayerCost, str | None]], board: Board | str) -> dict[str, Any]:
    """JSON-ready placement of every layer under the VTA model, next to the module actually built.

    ``layers`` as from ``layers_with_acts`` (i.e. ``count_costs``' layers, same order). The module
    ``compile`` builds runs all of them on the ARM cores; this says which ones the model would put
    on VTA (int8 GEMM convs), which it cannot and why, and the model's latency (``estimated``).
    """
    rep = vta_report(layers, board)
    board = get_board(board) if isinstance(board, str) else board
    on_arm = [est for est in rep.layers if est.device == "arm"]
    return {
        "backend": None,
        "note": (f"{NO_VTA_BACKEND}: subnet.so runs every layer on the board's ARM cores ({board.cpu_desc}) in "
                 "fp32; the placement and latency here are the analytic VTA model's (int8), labelled estimated"),
        "module_runs_on": board.cpu_desc,
        "offloadable": [est.name for est in rep.layers if est.device == "vta"],
        "not_offloadable": [est.name for est in on_arm],
        "not_offloadable_by_reason": dict(Counter(est.arm_reason for est in on_arm)),
        "activation_on_arm": [est.name for est in rep.layers if est.device == "vta" and est.act == "h_swish"],
        "layers": [{"name": est.name, "op": est.op, "activation": est.act, "vta_model": est.device,
                    "arm_reason": est.arm_reason,
                    "activation_on_arm": HSWISH_ON_ARM if est.act == "h_swish" else None,
                    "estimated_ms": round(est.ms, 5)} for est in rep.layers],
        "estimate": rep.summary(),
    }


def describe_offload(report: dict[str, Any]) -> list[str]:
    """The report of :func:`offload_report` as plain lines for the CLI (summary, then per layer)."""
    est, n_vta, n_arm = report["estimate"], len(report["offloadable"]), len(report["not_offloadable"])
    reasons = "; ".join(f"{n} {why}" for why, n in report["not_offloadable_by_reason"].items())
    lines = [
        f"note: {report['note']}.",
        f"VTA model: {n_vta} of {n_vta + n_arm} layers offloadable (int8 GEMM convs), {n_arm} not: {reasons}; "
        f"{len(report['activation_on_arm'])} offloadable convs leave their {HSWISH_ON_ARM} to the ARM cores.",
        f"{est['target']}: {est['latency_ms']:.2f} ms ({est['source']}), {est['gops']:.1f} GOP/s, "
        f"{est['intensity_int8']:.1f} ops/byte (int8), {100 * est['vta_time_fraction']:.0f} % of the time on VTA",
        f"  {'layer':<26}{'op':<8}{'VTA model':<10}{'ms':>9}  why not VTA",
    ]
    for row in report["layers"]:
        why = row["arm_reason"] or ("(h-swish on ARM)" if row["activation_on_arm"] else "")
        lines.append(f"  {row['name']:<26}{row['op']:<8}{row['vta_model']:<10}{row['estimated_ms']:>9.3f}  {why}")
    return lines
