"""Result records of the compile backend (plain data, JSON-friendly, no TVM)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

LatencySource = Literal["measured", "emulated", "estimated"]


@dataclass(frozen=True)
class BuildInfo:
    """What :func:`build_module` produced, for metadata next to the ``.so``.

    ``tuned_records_applied`` is true only if the MetaSchedule database scheduled at least one
    function (``tuned_funcs`` of ``total_funcs``); a database that matches nothing is not "tuned".
    ``schedule_sources`` counts every fused function by where its schedule came from: ``tuned``
    (this device's database), ``transferred`` (the same workload in another device's database),
    ``sibling`` (a structurally equal workload of another shape, re-fitted), ``default`` (a rule,
    or DLight on GPUs) and ``unscheduled`` (naive loops); ``transferred_from`` names the other
    databases offered, nearest device first.
    ``data_layout`` is :attr:`TargetSpec.data_layout` (the functions a database must hold).
    ``tvm_target`` is the exact target used (for ``x86-host`` LLVM's own CPU name may replace
    the registry guess).
    """

    so_path: str
    target_name: str
    tvm_target: dict[str, Any] = field(hash=False)
    tvm_version: str
    database_hash: str | None
    tuned_records_applied: bool
    tuned_funcs: int
    total_funcs: int
    schedule_sources: dict[str, int] = field(hash=False)
    transferred_from: tuple[str, ...]
    build_seconds: float
    input_name: str
    input_shape: tuple[int, ...]
    onnx_sha256: str
    data_layout: str = "NCHW"  # the activation layout the module computes in (its input and output stay NCHW / flat)
    cuda_graph: bool = False  # CUDA: main is captured into one CUDA graph on its first call, replayed after

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["transferred_from"] = list(self.transferred_from)
        return d

    @property
    def untuned_share(self) -> float:
        """The share of fused functions this device's database did not schedule."""
        return 1.0 - self.tuned_funcs / self.total_funcs if self.total_funcs else 0.0


@dataclass(frozen=True)
class LatencyMeasurement:
    """A latency and how it was obtained.

    ``source``: ``"measured"`` (real hardware, TVM time_evaluator), ``"emulated"`` (qemu: says
    nothing about device speed) or ``"estimated"`` (a model). ``n`` samples, each the mean of
    ``runs_per_sample`` back-to-back runs. ``probe_us``: the speed probe's median reading while
    those samples ran (``compile.speed``: a reading well above the machine's floor means it was
    timed while the CPU was shared); None where nothing was probed (a board, a GPU, older records).
    """

    median_ms: float
    std_ms: float
    n: int
    source: LatencySource
    runs_per_sample: int = 1
    device: str = ""
    probe_us: float | None = None

    def __post_init__(self) -> None:
        if self.source not in ("measured", "emulated", "estimated"):
            raise ValueError(f"unknown latency source {self.source!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
