"""Load a compiled ``.so`` on this machine's CPU and run or time it (worker-only: imports TVM)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tvm
from tvm import relax

log = logging.getLogger(__name__)


def _load(so_path: str, device: str) -> tuple[relax.VirtualMachine, tvm.runtime.Device]:
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    if not dev.exist:
        raise RuntimeError(f"no {device} device on this machine")
    return relax.VirtualMachine(tvm.runtime.load_module(so_path), dev), dev


def pool_threads() -> int:
    """Threads in TVM's CPU pool in this process: what a timing actually used (TVM_NUM_THREADS or TVM's default)."""
    return int(tvm.get_global_func("runtime.NumThreads")())


def _first_tensor(result: Any) -> tvm.runtime.Tensor:
    while isinstance(result, (tuple, list, tvm.ir.Array)) and len(result) > 0:
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


def time(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``time``: TVM time_evaluator; returns per-sample milliseconds."""
    vm, dev = _load(request["so_path"], request.get("device", "cpu"))
    x = tvm.runtime.tensor(np.load(request["input_path"]), dev)
    vm["main"](x)  # first call allocates the memory pools (and loads CUDA kernels): not a sample
    evaluator = vm.time_evaluator("main", dev, number=request["number"], repeat=request["repeat"])
    result = evaluator(x)
    return {"samples_ms": [float(s) * 1e3 for s in result.results], "number": request["number"],
            "threads": pool_threads()}


def time_interleaved(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``time_interleaved``: several modules in one process, one call each in turn, per-call ms.

    A shared VM's speed drifts by up to 1.6x within seconds to minutes (BENCHMARKS.md), so two
    modules timed one after the other can land in different states. Called in turns (A B C, B C A,
    C A B, ...) every module sees the same machine; compare them by their per-turn ratios.
    """
    import time as clock

    loaded = [_load(path, "cpu") for path in request["so_paths"]]
    vms, dev = [vm for vm, _ in loaded], loaded[0][1]
    x = tvm.runtime.tensor(np.load(request["input_path"]), dev)
    for _ in range(int(request["warmup"])):
        for vm in vms:
            vm["main"](x)
    samples: list[list[float]] = [[] for _ in vms]
    for turn in range(int(request["calls"])):
        for k in range(len(vms)):
            i = (turn + k) % len(vms)
            start = clock.perf_counter()
            vms[i]["main"](x)
            samples[i].append((clock.perf_counter() - start) * 1e3)
    return {"samples_ms": samples, "threads": pool_threads()}
