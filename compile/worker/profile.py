"""Build and time many small models in one process (worker-only: imports TVM).

``ofa-deploy profile`` times ~92 workloads per resolution (block variants, stem, head). One
worker process per workload would pay TVM's import and LLVM start-up ~92 times; this op builds
and times a whole list in one process instead. Each workload goes through exactly the code a
subnet build goes through (:func:`.build.build`: ONNX -> prepare -> database -> compile ->
``export_library``) into the parent's module cache, then is loaded like a deployed module
(:func:`.run._load`), so the timed kernels are the deployed ones. The parent calls this op
once to build (``time`` false) and once per timing pass.

With ``rpc`` in the request the modules (cross-compiled for the board) are timed on a remote
device instead: one RPC session per worker process uploads, loads and times the whole list
(:mod:`.rpc`), so a board pays the connection and session start once per chunk, not per model.

Every finished item is appended as one JSON line to ``results_path`` (flushed at once): the
parent follows that file for its progress bar and keeps what finished even if this process
crashes or is killed half-way.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tvm

from ofa_deploy.atomic import owner_tag

from .build import build
from .run import _load, pool_threads
from .speed_probe import SpeedProbe

log = logging.getLogger(__name__)


def probe_and_time(evaluate: Callable[[int, int], Sequence[float]], repeat: int,
                   min_repeat_ms: float) -> tuple[list[float], int]:
    """Per-sample milliseconds and the runs per sample, from ``evaluate(number, repeat) -> seconds per sample``.

    Each sample averages enough back-to-back runs to last ``min_repeat_ms``, so a 20 us kernel
    is averaged over thousands of runs and a 2 ms one over a few dozen: the median of
    ``repeat`` such samples is stable to ~1 % on an idle machine. The runs per sample are
    chosen here from a short probe (not by TVM's ``min_repeat_ms``, which does not report the
    number it settled on), so the reply states exactly what was averaged. ``min_repeat_ms`` 0:
    one run per sample and no probe (an emulator, whose speed means nothing anyway).
    """
    number = 1
    if min_repeat_ms > 0:
        one_ms = max(min(evaluate(1, 3)) * 1e3, 1e-4)
        number = max(1, math.ceil(min_repeat_ms / one_ms))
    return [float(s) * 1e3 for s in evaluate(number, repeat)], number


def time_module(so_path: str, input_shape: list[int], device: str, repeat: int, min_repeat_ms: float,
                probe: SpeedProbe | None = None, floor_us: float | None = None,
                wait_s: float = 0.0) -> tuple[list[float], int, list[float]]:
    """Per-sample milliseconds of one module on this machine (time_evaluator), the runs per sample, and the
    speed-probe readings.

    With ``probe`` (this CPU, ``compile.speed``): waits up to ``wait_s`` for the steady state against
    ``floor_us``, then reads the probe before every sample (one reading per sample; the parent keeps
    the steady samples). Without: no readings.
    """
    vm, dev = _load(so_path, device)
    x = tvm.runtime.tensor(_input(input_shape), dev)
    vm["main"](x)  # first call allocates the memory pools (and loads CUDA kernels): not a sample
    if probe is None:
        samples, number = probe_and_time(
            lambda n, rep: vm.time_evaluator("main", dev, number=n, repeat=rep)(x).results, repeat, min_repeat_ms)
        return samples, number, []
    probe.wait_steady(floor_us, wait_s)
    readings: list[float] = []
    samples, number = probe_and_time(lambda n, rep: probe.before_each(
        lambda: vm.time_evaluator("main", dev, number=n, repeat=1)(x).results[0], rep, readings),
        repeat, min_repeat_ms)
    return samples, number, readings[-len(samples):]  # the readings of the runs-per-sample probe are not samples


def _input(input_shape: list[int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)


Timer = Callable[[str, list[int], int, float], tuple[list[float], int]]


def _remote_timer(request: dict[str, Any]) -> Timer:
    """``time(so_path, input_shape, repeat, min_repeat_ms)`` on the request's RPC device, in one session.

    The session is opened on the first call (a build-only round never connects) and kept for the
    rest of the list.
    """
    from . import rpc as remote_rpc

    session: list[Any] = []

    def time_remote(so_path: str, input_shape: list[int], repeat: int, min_repeat_ms: float) -> tuple[list[float], int]:
        if not session:
            session.append(remote_rpc.connect(request["rpc"]))
        vm, dev, _x = remote_rpc.load_remote(session[0], so_path, _input(input_shape), request.get("device", "cpu"))
        vm.invoke_stateful("main")  # first call allocates the memory pools: not a sample
        return probe_and_time(lambda number, rep: remote_rpc.remote_samples(vm, dev, number, rep), repeat,
                              min_repeat_ms)

    return time_remote


def _build_cached(item: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The build report of ``item["so_path"]``, building it first if the cache lacks it.

    The ``.so`` and then its ``.json`` report are each written to a temp file and renamed, so a
    kill leaves either a finished pair or something the next run rebuilds.
    """
    so_path, info_path = item["so_path"], item["so_path"] + ".json"
    if not (os.path.isfile(so_path) and os.path.isfile(info_path)):
        # owner-tagged temporaries: the next profile sweeps those of a killed process (atomic.sweep_stale)
        tmp = os.path.join(os.path.dirname(so_path), f"{owner_tag()}{os.path.basename(so_path)}.tmp.so")
        info = build({
            "onnx_path": item["onnx_path"], "target_name": request["target_name"],
            "tvm_target": request["tvm_target"], "linker": request["linker"], "out_path": tmp,
            "input_name": request["input_name"], "input_shape": item["input_shape"],
            "data_layout": request["data_layout"], "database_dir": request.get("database_dir"),
            "transfer_databases": request.get("transfer_databases") or [],
        })
        os.replace(tmp, so_path)
        tmp_info = os.path.join(os.path.dirname(info_path), f"{owner_tag()}{os.path.basename(info_path)}.tmp")
        with open(tmp_info, "w") as f:
            json.dump({k: info[k] for k in ("tuned_funcs", "total_funcs", "schedule_sources", "tvm_version",
                                             "tvm_target")}, f)
        os.replace(tmp_info, info_path)
    with open(info_path) as f:
        return json.load(f)


def profile(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``profile``: build every item into its cached ``so_path`` if missing; with ``time``, time it.

    One JSON line per item in ``results_path`` (build report, plus samples when timed).
    """
    items = request["items"]
    results_path = Path(request["results_path"])
    device = request.get("device", "cpu")
    remote = request.get("rpc") is not None
    probe = SpeedProbe() if request["time"] and request.get("speed_probe") and not remote else None
    floor_us, wait_s = request.get("probe_floor_us"), float(request.get("steady_wait_s", 0.0))
    remote_timer = _remote_timer(request) if remote else None
    done = 0
    with open(results_path, "a") as out:
        for i, item in enumerate(items):
            record = {"key": item["key"], **_build_cached(item, request)}
            if request["time"]:
                repeat, min_ms = int(request["repeat"]), float(request["min_repeat_ms"])
                if remote_timer is not None:
                    samples, number = remote_timer(item["so_path"], item["input_shape"], repeat, min_ms)
                else:
                    samples, number, readings = time_module(item["so_path"], item["input_shape"], device, repeat,
                                                            min_ms, probe, floor_us, wait_s)
                    if probe is not None:
                        record.update(probe_us=readings, probe_lowest_us=probe.lowest_us)
                # the thread count is this process's pool: a remote board's is its server's, not known here
                record.update(samples_ms=samples, number=number, threads=None if remote else pool_threads())
                log.info("timed %d/%d %s: median %.4f ms (%d/%d functions tuned)", i + 1, len(items), item["key"],
                         float(np.median(samples)), record["tuned_funcs"], record["total_funcs"])
            out.write(json.dumps(record) + "\n")
            out.flush()
            done += 1
    return {"profiled": done, "tvm_version": tvm.__version__}
