"""Load a compiled ``.so`` on this machine (CPU or GPU) and run or time it (worker-only: imports TVM).

Only TVM's runtime is used here (``tvm.runtime``, not ``tvm.relax``), so ``run`` and ``time`` also work
where only the runtime is installed (``TVM_USE_RUNTIME_LIB=1``: a GPU box or a board the module was
shipped to; ``ofa-deploy check`` runs there).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm.runtime.vm import VirtualMachine

log = logging.getLogger(__name__)


def _cuda_runtime() -> None:
    """Load TVM's CUDA runtime library where TVM's backend autoload did not (it does not with the runtime only).

    It needs CUDA's ``libcudart.so.13`` (and the driver's ``libcuda.so.1``) on the loader path.
    """
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    if "tvm_runtime_cuda" in _LOADED_LIBS:
        return
    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                           extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    except (OSError, RuntimeError) as exc:
        raise RuntimeError(f"TVM's CUDA runtime (libtvm_runtime_cuda.so) did not load: {exc}; CUDA's "
                           "libcudart.so.13 and the driver's libcuda.so.1 must be on the loader path "
                           "(LD_LIBRARY_PATH)") from None


def _load(so_path: str, device: str) -> tuple[VirtualMachine, tvm.runtime.Device]:
    if device == "cuda":
        _cuda_runtime()
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    if not dev.exist:
        raise RuntimeError(f"no {device} device on this machine")
    return VirtualMachine(tvm.runtime.load_module(so_path), dev), dev


def pool_threads() -> int:
    """Threads in TVM's CPU pool in this process: what a timing actually used (TVM_NUM_THREADS or TVM's default)."""
    return int(tvm.get_global_func("runtime.NumThreads")())


def _first_tensor(result: Any) -> tvm.runtime.Tensor:
    while isinstance(result, (tuple, list, tvm_ffi.Array)) and len(result) > 0:
        if len(result) > 1:
            log.warning("model returned %d outputs; using the first", len(result))
        result = result[0]
    return result


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``run``: input .npy -> output .npy."""
    vm, dev = _load(request["so_path"], request.get("device", "cpu"))
    x = np.load(request["input_path"])
    out = _first_tensor(vm["main"](tvm.runtime.tensor(x, dev)))
    np.save(request["output_path"], out.numpy())
    return {}


def _speed_probe() -> Any:
    """The CPU speed probe, or None where only TVM's runtime is installed: the probe is a kernel built here."""
    try:
        from .speed_probe import SpeedProbe

        return SpeedProbe()
    except (ImportError, AttributeError) as exc:  # runtime-only TVM: tvm.te's compiler functions are absent
        log.warning("no speed probe without TVM's compiler (%s): samples are kept as timed", exc)
        return None


def time(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``time``: TVM time_evaluator; returns per-sample milliseconds.

    With ``speed_probe`` (this machine's CPU): waits up to ``steady_wait_s`` for the steady state,
    then reads the probe before every sample (``probe_us``, one per sample; ``compile.speed``).
    """
    vm, dev = _load(request["so_path"], request.get("device", "cpu"))
    x = tvm.runtime.tensor(np.load(request["input_path"]), dev)
    vm["main"](x)  # first call allocates the memory pools (and loads CUDA kernels): not a sample
    number, repeat = int(request["number"]), int(request["repeat"])
    probe = _speed_probe() if request.get("speed_probe") else None
    if probe is None:
        seconds = vm.time_evaluator("main", dev, number=number, repeat=repeat)(x).results
        return {"samples_ms": [float(s) * 1e3 for s in seconds], "number": number, "threads": pool_threads()}
    probe.wait_steady(request.get("probe_floor_us"), float(request.get("steady_wait_s", 0.0)))
    evaluator = vm.time_evaluator("main", dev, number=number, repeat=1)
    readings: list[float] = []
    seconds = probe.before_each(lambda: evaluator(x).results[0], repeat, readings)
    return {"samples_ms": [float(s) * 1e3 for s in seconds], "number": number, "threads": pool_threads(),
            "probe_us": readings, "probe_lowest_us": probe.lowest_us}


def _onnxruntime_call(onnx_path: str, x: np.ndarray, threads: int) -> Any:
    """One ONNX Runtime inference of ``onnx_path`` on ``x`` as a call, ``threads`` intra-op threads (ORT's defaults
    otherwise, spinning included: what a user of ORT gets)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def time_interleaved(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``time_interleaved``: several modules in one process, in turns, per-sample ms.

    A shared VM's speed drifts by up to 1.6x within seconds to minutes (BENCHMARKS.md), so two
    modules timed one after the other can land in different states. Called in turns (A B C, B C A,
    C A B, ...) every module sees the same machine; compare them by their per-turn ratios. Each
    turn calls every module ``settle`` times untimed, then takes ``block`` timed samples, back to
    back: the first call after a switch pays for the other runtime's thread pool still spinning on
    the cores (a TVM call right after an ORT call ran up to 3x slow, BENCHMARKS.md), which is not
    either runtime's speed. A sample is one call from Python (what an application calling either
    runtime pays), or with ``min_sample_ms`` the mean of enough back-to-back calls to last that long
    (``numbers``: calls per sample, chosen per entry in the warm-up), so a 20 us block is timed as
    reliably as a 10 ms subnet; a module's such samples are TVM's ``time_evaluator`` (one untimed
    call, then the calls in C++), as ``profile`` times one model after another: a call from Python
    costs ~45 us more, which a block inside a network never pays (BENCHMARKS.md, "Timing in
    turns"). ``onnx_paths`` join the turns as ONNX Runtime sessions with as many threads as TVM's
    pool: the reference runtime timed in the same process, same turns (its samples follow the
    modules' in the reply).

    ``input_paths``: one input per entry (modules of different input sizes), ONNX sessions' included.
    ``progress_path``: a byte is appended there after every turn (the parent's progress bar).
    """
    import math
    import time as clock

    loaded = [_load(path, "cpu") for path in request["so_paths"]]
    dev = loaded[0][1]
    arrays = [np.load(p) for p in request["input_paths"]]
    inputs = [tvm.runtime.tensor(a, dev) for a in arrays[:len(loaded)]]
    calls = [(lambda vm=vm, x=x: vm["main"](x)) for (vm, _), x in zip(loaded, inputs)]
    calls += [_onnxruntime_call(path, arrays[len(loaded) + k], pool_threads())
              for k, path in enumerate(request.get("onnx_paths", []))]
    block, settle = int(request.get("block", 1)), int(request.get("settle", 0))
    min_sample_ms = float(request.get("min_sample_ms", 0.0))
    for _ in range(int(request["warmup"])):
        for call in calls:
            call()

    def from_python(call: Any, number: int) -> Any:  # ms per call of `number` calls from Python
        def sample() -> float:
            start = clock.perf_counter()
            for _ in range(number):
                call()
            return (clock.perf_counter() - start) * 1e3 / number
        return sample

    def in_tvm(vm: Any, x: Any, number: int) -> Any:  # ms per call of time_evaluator's `number` calls
        evaluator = vm.time_evaluator("main", dev, number=number, repeat=1)
        return lambda: evaluator(x).results[0] * 1e3

    numbers = [1] * len(calls)
    samplers = [from_python(call, 1) for call in calls]
    if min_sample_ms > 0:
        for i, call in enumerate(calls):
            def sampler(number: int, i: int = i, call: Any = call) -> Any:
                return in_tvm(loaded[i][0], inputs[i], number) if i < len(loaded) else from_python(call, number)

            once = sampler(1)
            numbers[i] = max(1, math.ceil(min_sample_ms / max(min(once() for _ in range(3)), 1e-4)))
            samplers[i] = sampler(numbers[i])
    samples: list[list[float]] = [[] for _ in calls]
    progress = open(request["progress_path"], "ab", buffering=0) if request.get("progress_path") else None
    for turn in range(int(request["calls"])):
        for k in range(len(calls)):
            i = (turn + k) % len(calls)
            for _ in range(settle):
                calls[i]()
            for _ in range(block):
                samples[i].append(samplers[i]())
        if progress is not None:
            progress.write(b".")
    if progress is not None:
        progress.close()
    return {"samples_ms": samples, "numbers": numbers, "threads": pool_threads()}
