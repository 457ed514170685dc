"""Parent-side API: build, run and time modules. Never imports TVM (worker/build.py and worker/run.py do)."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.targets import DATA_LAYOUTS, TargetSpec, get_target
from ofa_deploy.tuning_logs.database import (best_records, check_database_target, database_data_layout, database_hash,
                                             file_sha256)

from .binfmt import elf_machine, embedded_fatbins
from .isolate import run_worker
from .speed import SteadyState, median_probe, steady_samples
from .toolchain import find_nvcc, linker_for
from .types import BuildInfo, LatencyMeasurement

log = logging.getLogger(__name__)

DEFAULT_BUILD_TIMEOUT_S = 3600.0
DEFAULT_RUN_TIMEOUT_S = 600.0


def _check_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise OfaDeployError(f"input_shape must be positive integers, e.g. (1, 3, 224, 224); got {input_shape!r}")
    return shape


def build_module(onnx_path: str | Path, target: TargetSpec | str, out_path_so: str | Path, *,
                 input_name: str, input_shape: tuple[int, ...] | list[int],
                 database_dir: str | Path | None = None,
                 transfer_databases: Sequence[tuple[str, str | Path]] = (),
                 timeout: float | None = DEFAULT_BUILD_TIMEOUT_S, data_layout: str | None = None,
                 cuda_graph: bool = True) -> BuildInfo:
    """Compile an ONNX model into a deployable ``.so`` for ``target``.

    The work runs in a child process (isolate.py), so a TVM crash is an OfaDeployError here.
    The ``.so`` is written atomically (temp file + rename). With ``database_dir`` (a
    MetaSchedule JSON database tuned for this target's device) tuned schedules are applied where
    they match; for CPU targets every other function takes a schedule from
    ``transfer_databases`` ((label, folder) of other devices' databases, nearest first: the same
    workload, or a structural sibling), else a rule (compile/worker/schedules.py). BuildInfo
    counts the functions by where their schedule came from. ``data_layout`` overrides the
    target's (:attr:`TargetSpec.data_layout`): for benches that compare layouts. ``cuda_graph``
    (CUDA targets): the whole static-shape network is captured into one CUDA graph on the first
    call and replayed on every later one (one launch instead of one per kernel: at batch 1 the
    launches cost more than the kernels; BENCHMARKS.md "CUDA modules on a GPU").

    Raises:
        OfaDeployError: analytic-only target, missing ONNX file or tool (with the package to
        install), bad database directory, or a failed/crashed TVM build.
    """
    spec = get_target(target)
    if spec.analytic_only:
        raise OfaDeployError(f"target {spec.name} is analytic-only ({spec.description}): TVM has no backend for "
                             "it; build its host_spec() (the whole network on its host CPU), as compile does")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise OfaDeployError(f"ONNX file not found: {onnx_path}")
    shape = _check_shape(input_shape)
    layout = data_layout or spec.data_layout
    if layout not in DATA_LAYOUTS:
        raise OfaDeployError(f"data_layout must be one of {', '.join(DATA_LAYOUTS)}; got {layout!r}")
    env: dict[str, str] = {}
    if spec.kind == "cuda":
        nvcc_dir = str(Path(find_nvcc()).parent)  # TVM runs "nvcc" from PATH
        env = {"PATH": nvcc_dir + os.pathsep + os.environ.get("PATH", ""), "TVM_CUDA_COMPILE_MODE": "nvcc"}
    linker = linker_for(spec.cross_compiler)
    db_hash = None
    if database_dir is not None:
        db_hash = database_hash(database_dir)
        check_database_target(database_dir, spec.tvm_target, spec.name)
        tuned_in = database_data_layout(database_dir)
        if tuned_in not in (None, layout):
            raise OfaDeployError(f"database {database_dir} was tuned in {tuned_in}; {spec.name} modules are built in "
                                 f"{layout}, so none of its schedules would apply: re-tune "
                                 f"('ofa-deploy tune --target {spec.name}' into a fresh folder)")
    out = Path(out_path_so)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.so")
    request = {
        "op": "build", "onnx_path": str(onnx_path.resolve()), "target_name": spec.name,
        "tvm_target": spec.tvm_target_with_host(), "linker": linker, "out_path": str(tmp),
        "input_name": input_name, "input_shape": list(shape), "data_layout": layout,
        # the build reads each workload's fastest record only: a copy with just those loads ~7x faster
        "database_dir": str(best_records(database_dir).resolve()) if database_dir is not None else None,
        "transfer_databases": [[label, str(Path(d).resolve())] for label, d in transfer_databases],
        "cuda_graph": cuda_graph and spec.kind == "cuda",
    }
    start = time.perf_counter()
    try:
        reply = run_worker(request, what=f"building {spec.name} module from {onnx_path.name}",
                           timeout=timeout, env=env)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return BuildInfo(
        so_path=str(out), target_name=spec.name, tvm_target=reply["tvm_target"],
        tvm_version=reply["tvm_version"], database_hash=db_hash,
        tuned_records_applied=db_hash is not None and reply["tuned_funcs"] > 0,
        tuned_funcs=reply["tuned_funcs"], total_funcs=reply["total_funcs"],
        schedule_sources=reply["schedule_sources"],
        transferred_from=tuple(label for label, _ in transfer_databases),
        build_seconds=round(time.perf_counter() - start, 3), input_name=input_name,
        input_shape=shape, onnx_sha256=file_sha256(onnx_path), data_layout=reply["data_layout"],
        cuda_graph=request["cuda_graph"])


def _check_local_module(so_path: str | Path, device: str | None) -> tuple[Path, str]:
    """The module path and the device to run it on (auto: ``cuda`` iff it embeds CUDA kernels)."""
    path = Path(so_path)
    if device not in (None, "cpu", "cuda"):
        raise OfaDeployError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if not path.is_file():
        raise OfaDeployError(f"module not found: {path}")
    machine, here = elf_machine(path), platform.machine()
    if machine is None:
        raise OfaDeployError(f"{path} is not a compiled module (not an ELF shared library)")
    if machine != here:
        raise OfaDeployError(f"{path} is an {machine} module and this machine is {here}: run it on the device"
                             + (" or with run_emulated_aarch64()" if machine == "aarch64" else ""))
    is_cuda = bool(embedded_fatbins(path))
    if device is None:
        device = "cuda" if is_cuda else "cpu"
    if is_cuda and device != "cuda":
        raise OfaDeployError(f"{path} is a CUDA module: it needs an NVIDIA GPU (device='cuda')")
    if device == "cuda" and not is_cuda:
        raise OfaDeployError(f"{path} is a CPU module; use device='cpu'")
    return path, device


def _as_input(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def run_local(so_path: str | Path, input: np.ndarray, *, device: str | None = None,
              timeout: float | None = DEFAULT_RUN_TIMEOUT_S) -> np.ndarray:
    """Run a module built for this machine on ``input``; returns the first output.

    ``device``: ``"cpu"`` (``x86-host`` modules) or ``"cuda"`` (CUDA modules, on a machine with
    an NVIDIA GPU; ``cuda-sm80``'s embedded PTX also runs on newer GPUs); default: from the
    module (CUDA iff it embeds CUDA kernels).
    """
    path, device = _check_local_module(so_path, device)
    with tempfile.TemporaryDirectory(prefix="ofa_deploy_run_") as tmp:
        in_path, out_path = Path(tmp) / "input.npy", Path(tmp) / "output.npy"
        np.save(in_path, _as_input(input))
        run_worker({"op": "run", "so_path": str(path.resolve()), "input_path": str(in_path),
                    "output_path": str(out_path), "device": device},
                   what=f"running {path.name}", timeout=timeout)
        return np.load(out_path)


def time_local(so_path: str | Path, input: np.ndarray, *, repeat: int = 20, number: int = 5,
               num_threads: int | None = None, device: str | None = None, steady_wait_s: float = 10.0,
               timeout: float | None = DEFAULT_RUN_TIMEOUT_S) -> LatencyMeasurement:
    """Measure a module on this machine with TVM's time_evaluator (``source="measured"``).

    ``repeat`` samples, each the mean of ``number`` runs, after one discarded warm-up call.
    ``num_threads`` sets TVM_NUM_THREADS (default: ``isolate.tvm_threads()``, all cores). On a CPU
    the samples are timed as ``profile`` times its tables (``compile.speed``): after waiting up to
    ``steady_wait_s`` for the machine's steady state, only the samples the speed probe calls steady
    count; a latency timed while the machine was slowed anyway is logged as such. Other load on
    the machine inflates the numbers: measure on an idle machine.
    """
    if repeat < 1 or number < 1:
        raise OfaDeployError(f"repeat and number must be >= 1 (got repeat={repeat}, number={number})")
    path, device = _check_local_module(so_path, device)
    env = {"TVM_NUM_THREADS": str(num_threads)} if num_threads else {}  # else run_worker's tvm_threads()
    steady = SteadyState.for_host(num_threads) if device == "cpu" else None
    with tempfile.TemporaryDirectory(prefix="ofa_deploy_time_") as tmp:
        in_path = Path(tmp) / "input.npy"
        np.save(in_path, _as_input(input))
        reply = run_worker({"op": "time", "so_path": str(path.resolve()), "input_path": str(in_path),
                            "repeat": repeat, "number": number, "device": device,
                            **(steady.request(steady_wait_s) if steady else {})},
                           what=f"timing {path.name}", timeout=timeout + steady_wait_s if timeout else None, env=env)
    if steady is None:
        return local_measurement(reply, device)
    steady.saw(reply)
    m = local_measurement(reply, device, steady.floor_us)
    if steady.contended(m.probe_us):
        log.warning("%s was timed while this machine was slowed (speed probe %.2f us per launch, steady %.2f): "
                    "%.3f ms is high, by up to 1.6x on a shared VM; measure again when the machine is quiet",
                    path.name, m.probe_us, steady.floor_us, m.median_ms)
    return m


def time_interleaved(so_paths: Sequence[str | Path], input: np.ndarray | Sequence[np.ndarray], *, calls: int = 200,
                     warmup: int = 10, num_threads: int | None = None, onnx_paths: Sequence[str | Path] = (),
                     block: int = 1, settle: int = 0,
                     timeout: float | None = DEFAULT_RUN_TIMEOUT_S) -> list[list[float]]:
    """Per-call milliseconds of several CPU modules called in turns in one process (``calls`` turns).

    For comparing modules on a machine whose speed drifts: the k-th samples of two modules were
    taken within one turn, so their ratio is free of the drift (median of per-turn ratios, see
    :func:`turn_ratio`). ``onnx_paths`` are timed in the same turns by ONNX Runtime with the same
    number of threads (the reference runtime a user would otherwise ship); their samples follow
    the modules'. Each turn calls every entry ``settle`` times untimed (the first calls after a
    switch pay for the other runtime's threads still spinning), then ``block`` times timed, back
    to back: ``calls * block`` samples each. ``input``: one array for all, or one per module (then
    ``onnx_paths`` reuse the first).
    """
    if calls < 1 or warmup < 0 or block < 1 or settle < 0 or not so_paths:
        raise OfaDeployError(f"time_interleaved needs modules, calls >= 1, block >= 1, settle >= 0 and warmup >= 0 "
                             f"(got {len(so_paths)} modules, calls={calls}, block={block}, settle={settle}, "
                             f"warmup={warmup})")
    paths = [str(_check_local_module(p, "cpu")[0].resolve()) for p in so_paths]
    onnx = [str(Path(p).resolve()) for p in onnx_paths]
    missing = [p for p in onnx if not Path(p).is_file()]
    if missing:
        raise OfaDeployError(f"ONNX model not found: {missing[0]}")
    env = {"TVM_NUM_THREADS": str(num_threads)} if num_threads else {}
    arrays = list(input) if isinstance(input, (list, tuple)) else [input] * len(paths)
    if len(arrays) != len(paths):
        raise OfaDeployError(f"time_interleaved: give one input for all modules or one per module (got {len(arrays)} "
                             f"inputs for {len(paths)} modules)")
    with tempfile.TemporaryDirectory(prefix="ofa_deploy_time_") as tmp:
        in_paths = [str(Path(tmp) / f"input{i}.npy") for i in range(len(arrays))]
        for path, x in zip(in_paths, arrays):
            np.save(path, _as_input(x))
        reply = run_worker({"op": "time_interleaved", "so_paths": paths, "onnx_paths": onnx, "block": block,
                            "settle": settle, "input_paths": in_paths + in_paths[:1] * len(onnx),
                            "calls": calls, "warmup": warmup},
                           what=f"timing {len(paths) + len(onnx)} models in turns", timeout=timeout, env=env)
    return reply["samples_ms"]


def turn_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over turns of ``a[k] / b[k]``: two runtimes' speed ratio with the machine's drift cancelled."""
    if len(a) != len(b) or not a:
        raise OfaDeployError(f"turn_ratio needs two equally long, non-empty sample lists (got {len(a)} and {len(b)})")
    return statistics.median(x / y for x, y in zip(a, b))


def local_measurement(reply: dict[str, Any], device: str, floor_us: float | None = None) -> LatencyMeasurement:
    """A worker's timing reply (``samples_ms``, ``number``, ``threads``) on this machine as a measurement.

    The CPU label carries the thread count TVM's pool reported, not the one asked for. A reply with
    speed-probe readings (``probe_us``, one per sample) keeps only the samples timed in the steady
    state against ``floor_us`` (``speed.steady_samples``: all of them if too few were).
    """
    samples, probes = reply["samples_ms"], reply.get("probe_us") or []
    if probes:
        samples, probes = steady_samples(samples, probes, floor_us)
    where = "cuda:0" if device == "cuda" else f"{platform.machine()} ({reply['threads']} threads)"
    return LatencyMeasurement(
        median_ms=statistics.median(samples), std_ms=statistics.pstdev(samples) if len(samples) > 1 else 0.0,
        n=len(samples), source="measured", runs_per_sample=reply["number"], device=where,
        probe_us=median_probe(probes))


def validate_target_specs(specs: list[TargetSpec], *, timeout: float | None = 300.0) -> dict[str, str | None]:
    """Ask TVM whether each spec's target dict (with host) is usable: ``{name: problem or None}``.

    Checks that ``tvm.target.Target`` accepts the dict and that LLVM knows every ``-mcpu``
    (TVM itself silently accepts unknown CPU names and emits generic code).
    """
    targets = {s.name: s.tvm_target_with_host() for s in specs}
    reply = run_worker({"op": "check_targets", "targets": targets}, what="checking target dicts", timeout=timeout)
    return reply["problems"]
