"""Parent-side API for timing many small models: ``time_workloads``. Never imports TVM.

The per-block latency table of ``ofa-deploy profile`` needs ~92 small models built and timed per
resolution. They are sent to the worker op ``profile`` (tvm_profile.py) in chunks: one process
per chunk pays TVM's start-up once for many workloads, while a crash (or a kill) loses at most
the workload in flight, because the worker appends each finished timing to a results file that
this side follows. Following that file also drives the progress bar, workload by workload.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.targets import TargetSpec, get_target

from .database import check_database_target, database_hash
from .isolate import run_worker_polling
from .toolchain import find_nvcc, linker_for
from .types import LatencyMeasurement

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileSettings:
    """How each workload is timed; defaults give ~1 % medians for 20 us..2 ms models on an idle CPU."""

    repeat: int = 15  # samples per workload; the median is kept
    min_repeat_ms: float = 40.0  # each sample runs the model back to back for at least this long
    chunk_size: int = 16  # workloads per worker process (start-up ~5 s is paid once per chunk)
    num_threads: int | None = None  # TVM_NUM_THREADS; None = isolate.tvm_threads() (all cores), as time_local
    timeout_per_item_s: float = 600.0  # a chunk's worker gets chunk_size x this

    def __post_init__(self) -> None:
        if self.repeat < 1 or self.min_repeat_ms < 0 or self.chunk_size < 1:
            raise OfaDeployError(f"profile settings: repeat >= 1, min_repeat_ms >= 0 and chunk_size >= 1 "
                                 f"(got {self.repeat}, {self.min_repeat_ms}, {self.chunk_size})")


@dataclass(frozen=True)
class WorkloadItem:
    """One model to time: its key, ONNX file and static input shape."""

    key: str
    onnx_path: Path
    input_shape: tuple[int, ...]


OnResult = Callable[[str, LatencyMeasurement, dict[str, Any]], None]


def local_device(spec: TargetSpec) -> str:
    """``"cpu"`` or ``"cuda"`` if modules for ``spec`` run on this machine; else OfaDeployError."""
    if spec.analytic_only:
        raise OfaDeployError(f"target {spec.name} is analytic-only ({spec.description}); nothing can be timed")
    if spec.kind == "cpu" and spec.arch == platform.machine() and not spec.is_cross:
        return "cpu"
    if spec.kind == "cuda":
        import torch  # only to ask whether a GPU is present

        if torch.cuda.is_available():
            return "cuda"
        raise OfaDeployError(f"target {spec.name}: no CUDA GPU on this machine to time it on")
    raise OfaDeployError(f"target {spec.name} ({spec.arch}) does not run on this machine ({platform.machine()}); "
                         "only local targets can be timed today (x86-host; CUDA targets with a GPU)")


def _measurement(record: dict[str, Any], device: str) -> LatencyMeasurement:
    samples = record["samples_ms"]
    where = "cuda:0" if device == "cuda" else f"{platform.machine()} ({record['threads']} threads)"  # TVM's pool
    return LatencyMeasurement(median_ms=statistics.median(samples),
                              std_ms=statistics.pstdev(samples) if len(samples) > 1 else 0.0,
                              n=len(samples), source="measured", runs_per_sample=record["number"], device=where)


def time_workloads(items: Sequence[WorkloadItem | tuple[str, str | Path, Sequence[int]]], target: TargetSpec | str,
                   database_dir: str | Path | None = None, *, input_name: str = "input",
                   settings: ProfileSettings = ProfileSettings(), on_result: OnResult | None = None,
                   progress: bool | None = True) -> dict[str, LatencyMeasurement]:
    """Build each ONNX model for ``target`` (with ``database_dir`` if given) and time it here.

    Returns ``{key: LatencyMeasurement}`` (``source="measured"``). ``on_result(key, measurement,
    record)`` is called as each workload finishes (``record`` has ``tuned_funcs``,
    ``total_funcs``, ``tvm_version``), so a caller can persist partial results; a later failure
    raises OfaDeployError after those calls.
    """
    spec = get_target(target)
    device = local_device(spec)
    work = [it if isinstance(it, WorkloadItem) else WorkloadItem(str(it[0]), Path(it[1]), tuple(int(d) for d in it[2]))
            for it in items]
    for it in work:
        if not Path(it.onnx_path).is_file():
            raise OfaDeployError(f"ONNX file not found: {it.onnx_path} (workload {it.key})")
    if database_dir is not None:
        database_hash(database_dir)  # validates the directory
        check_database_target(database_dir, spec.tvm_target, spec.name)
    env: dict[str, str] = {}
    if spec.kind == "cuda":
        env = {"PATH": str(Path(find_nvcc()).parent) + os.pathsep + os.environ.get("PATH", ""),
               "TVM_CUDA_COMPILE_MODE": "nvcc"}
    if settings.num_threads:  # else run_worker's tvm_threads()
        env["TVM_NUM_THREADS"] = str(settings.num_threads)
    base = {"op": "profile", "target_name": spec.name, "tvm_target": spec.tvm_target_with_host(),
            "linker": linker_for(spec.cross_compiler), "input_name": input_name, "device": device,
            "database_dir": str(Path(database_dir).resolve()) if database_dir is not None else None,
            "repeat": settings.repeat, "min_repeat_ms": settings.min_repeat_ms}
    out: dict[str, LatencyMeasurement] = {}
    bar = tqdm(total=len(work), desc=f"profile {spec.name}", unit="model", file=sys.stderr,
               disable=None if progress is None else not progress)
    try:
        for start in range(0, len(work), settings.chunk_size):
            chunk = work[start:start + settings.chunk_size]
            _run_chunk(chunk, base, env, settings, device, out, bar, on_result)
    finally:
        bar.close()
    return out


def _run_chunk(chunk: list[WorkloadItem], base: dict[str, Any], env: dict[str, str], settings: ProfileSettings,
               device: str, out: dict[str, LatencyMeasurement], bar: tqdm, on_result: OnResult | None) -> None:
    """One worker process for ``chunk``; follow its results file until it exits."""
    with tempfile.TemporaryDirectory(prefix="ofa_deploy_profile_") as tmp:
        results = Path(tmp) / "results.jsonl"
        results.touch()
        request = {**base, "results_path": str(results),
                   "items": [{"key": it.key, "onnx_path": str(Path(it.onnx_path).resolve()),
                              "input_shape": list(it.input_shape)} for it in chunk]}
        seen, pending = 0, b""
        with open(results, "rb") as f:

            def drain() -> None:  # the worker appends one JSON line per timed workload
                nonlocal seen, pending
                pending += f.read()
                *lines, pending = pending.split(b"\n")  # a half-written last line waits for the next round
                for line in lines:
                    record = json.loads(line)
                    m = _measurement(record, device)
                    out[record["key"]] = m
                    seen += 1
                    bar.update(1)
                    bar.set_postfix_str(f"{record['key']} {m.median_ms:.3f} ms")
                    log.info("timed %s: %.4f ms (median of %d x %d runs; %d/%d functions tuned)", record["key"],
                             m.median_ms, m.n, m.runs_per_sample, record["tuned_funcs"], record["total_funcs"])
                    if on_result is not None:
                        on_result(record["key"], m, record)

            run_worker_polling(request, what=f"profiling {len(chunk)} workloads ({chunk[0].key} ...)",
                               timeout=settings.timeout_per_item_s * len(chunk), env=env, poll=drain)
        if seen != len(chunk):
            raise OfaDeployError(f"profiling worker returned {seen} of {len(chunk)} timings")
