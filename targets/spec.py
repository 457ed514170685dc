"""`TargetSpec`: everything ofa-deploy needs to know about one deployment target.

A spec is plain data (no TVM objects) so that the registry stays importable without TVM and
can be written into metadata files as JSON. ``compile/`` turns ``tvm_target``/``host`` into
``tvm.target.Target`` objects; TVM 0.27 only accepts the JSON-dict form, not the old
``"llvm -mcpu=..."`` strings, so the dicts here are in that form.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["cpu", "cuda", "vta"]
KINDS: tuple[str, ...] = ("cpu", "cuda", "vta")
DATA_LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC")  # activation layouts a module can be built in


@dataclass(frozen=True)
class VtaFabric:
    """The per-board part of a VTA design: how fast its FPGA fabric runs and how wide it reads DRAM.

    The VTA design itself (GEMM shape, buffer sizes, instruction costs) is the same on every
    board and lives with the model (``ofa_deploy.latency.vta.VtaConfig``).
    """

    clock_mhz: float  # FPGA clock the VTA bitstream runs at
    axi_bits: int  # width of VTA's AXI master port to DRAM
    source: str  # where the two figures come from


@dataclass(frozen=True)
class TargetSpec:
    """A named, documented deployment target.

    Attributes:
        name: registry key, e.g. ``"cortex-a76"``.
        description: one line naming the board/chip the numbers below describe.
        tvm_target: TVM 0.27 target in JSON-dict form, e.g.
            ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}``.
            Treat as read-only (use :meth:`replace` to derive a variant).
        host: the host-side target dict for device targets (CUDA, VTA), else ``None``.
        kind: ``"cpu"``, ``"cuda"`` or ``"vta"``.
        arch: the CPU architecture code runs on (for CUDA/VTA: the host CPU's), e.g.
            ``"aarch64"``; decides cross compilation and emulation.
        cross_compiler: the C++ compiler that links the module for this target when it is not
            the build machine, e.g. ``"aarch64-linux-gnu-g++"``; ``None`` = the native ``g++``.
        cores: parallel units: CPU cores for ``cpu``/``vta`` kinds, streaming multiprocessors
            for ``cuda``.
        peak_gflops_fp32: theoretical fp32 peak (roofline ceiling), ``None`` if unknown.
        peak_gbps: theoretical DRAM bandwidth in GB/s, ``None`` if unknown.
        peak_source: where the two peak figures come from (datasheet, or how they were derived).
        aliases: other spellings :func:`get_target` accepts (TVM tags, board nicknames).
        analytic_only: ``True`` when TVM has no backend for the target itself (VTA: removed in
            apache/tvm PR 17542), so its latency comes from an analytic model only; ``compile``
            builds such a target's :meth:`host_spec` instead (every layer on the host CPU).
        vta: the board's VTA fabric for ``kind="vta"``, else ``None``. For VTA targets ``cores``,
            ``peak_gflops_fp32`` and ``peak_gbps`` describe the board's ARM cores and the DRAM
            they share with the fabric (VTA itself is int8-only).
    """

    name: str
    description: str
    tvm_target: dict[str, Any] = field(hash=False)
    host: dict[str, Any] | None = field(hash=False)
    kind: Kind
    arch: str
    cross_compiler: str | None
    cores: int
    peak_gflops_fp32: float | None
    peak_gbps: float | None
    peak_source: str
    aliases: tuple[str, ...] = ()
    analytic_only: bool = False
    vta: VtaFabric | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"TargetSpec {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if "kind" not in self.tvm_target:
            raise ValueError(f"TargetSpec {self.name!r}: tvm_target needs a 'kind' key")
        if (self.kind == "vta") != (self.vta is not None) or (self.kind == "vta" and self.host is None):
            raise ValueError(f"TargetSpec {self.name!r}: kind 'vta' needs both vta (fabric) and host (ARM "
                             "target dict); other kinds take no vta")

    @property
    def data_layout(self) -> str:
        """The activation layout modules for this target are built (and tuned) in.

        CPUs: ``NHWC``. Depthwise convolutions vectorise along channels there; in NCHW a stride-2
        one reads every other float of a row, which LLVM emits as scalar loads. Measured on znver4
        (2 threads, max subnet @224, BENCHMARKS.md "Data layout"): rule schedules 75.0 -> 15.2 ms,
        and 32 tuning trials per task in NHWC beat 64+ in NCHW (14.4 -> 11.9 ms). GPUs keep
        ``NCHW``, the layout their DLight rules and databases were made for (no GPU here to measure).
        """
        return "NCHW" if self.kind == "cuda" else "NHWC"

    @property
    def is_cross(self) -> bool:
        """True when modules for this target are linked by a cross compiler."""
        return self.cross_compiler is not None

    def tvm_target_with_host(self) -> dict[str, Any]:
        """The target dict with ``host`` folded in, ready for ``tvm.target.Target(dict)``."""
        out = copy.deepcopy(self.tvm_target)
        if self.host is not None and self.kind != "cpu":
            out["host"] = copy.deepcopy(self.host)
        return out

    def host_spec(self) -> TargetSpec:
        """The CPU target modules are compiled for: ``self``, or for VTA the board's ARM cores.

        TVM 0.27 has no VTA backend, so a VTA board's deployable module is the whole network
        compiled for its ARM host (same cores, clock figures and cross compiler as the entry).
        """
        if self.kind != "vta":
            return self
        assert self.host is not None  # checked in __post_init__
        return self.replace(name=f"{self.name}-arm", kind="cpu", tvm_target=self.host, host=None, aliases=(),
                            analytic_only=False, vta=None,
                            description=f"the ARM host of {self.name}: {self.description}")

    def replace(self, **changes: Any) -> TargetSpec:
        """A copy with some fields changed (the dicts are deep-copied, never shared)."""
        spec = dataclasses.replace(self, **changes)
        object.__setattr__(spec, "tvm_target", copy.deepcopy(spec.tvm_target))
        object.__setattr__(spec, "host", copy.deepcopy(spec.host))
        return spec

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, for metadata files."""
        d = dataclasses.asdict(self)
        d["aliases"] = list(self.aliases)
        return d
