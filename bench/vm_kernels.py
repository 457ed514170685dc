"""Each kernel's time inside a running network: a Relax VM instrument around every call (benches only).

Also what the benches that look inside a network share: a subnet of ``compare_runtimes.SUBNETS``
by its short name, its Relax module prepared as ``ofa-deploy compile`` prepares it, and a VM of it.

``time_evaluator`` on one kernel times it warm, rerun back to back; inside a network its inputs
were just written by the previous kernel and its weights and output come from wherever the rest
of the network left them. This times the calls where they happen. The instrument's own cost
(a Python call before and after each kernel, a few microseconds) is inside every figure.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from compare_runtimes import SUBNETS

SUBNET_NAMES = [key.split()[0] for key in SUBNETS]  # "max", "mid", "min"


def subnet_named(name: str) -> Any:
    """The ``SubnetConfig`` of ``SUBNETS`` whose key starts with ``name``."""
    return next(cfg for key, cfg in SUBNETS.items() if key.split()[0] == name)


def prepared_subnet(cfg: Any, spec: Any, target: Any, onnx_path: Path) -> Any:
    """``cfg``'s network (seed-0 weights) as a fused Relax module in the target's layout, before any schedule.

    The ONNX is written to ``onnx_path``, where another runtime can load the same network.
    """
    from ofa_deploy.compile.worker.build import load_onnx, prepare
    from ofa_deploy.export import INPUT_NAME, export_onnx
    from ofa_deploy.search_space import random_subnet

    export_onnx(random_subnet(cfg, seed=0), cfg.image_size, onnx_path)
    mod = load_onnx(str(onnx_path), INPUT_NAME, [1, 3, cfg.image_size, cfg.image_size])
    return prepare(mod, target, spec.data_layout)


def load_vm(mod: Any, target: Any) -> Any:
    """A Relax VM on this CPU of a scheduled module, lowered as ``ofa-deploy compile`` lowers it."""
    import tvm
    from tvm import relax

    from ofa_deploy.compile.worker.build import lowering_pipeline

    with target:
        return relax.VirtualMachine(tvm.compile(mod, target, relax_pipeline=lowering_pipeline(target)), tvm.cpu())


def kernel_calls(vm: Any, x: Any, runs: int) -> list[list[tuple[str, float]]]:
    """``runs`` inferences of ``vm["main"](x)``: for each, every compiled kernel call in order as (name, us).

    VM builtins (``vm.builtin.*``: allocation, shape checks) are left out.
    """
    started: dict[str, float] = {}
    calls: list[tuple[str, float]] = []

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *args: Any) -> int:
        if before:
            started["t"] = time.perf_counter()
        elif not symbol.startswith("vm."):
            calls.append((symbol, (time.perf_counter() - started["t"]) * 1e6))
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    out = []
    vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            calls = []
            vm["main"](x)
            out.append(calls)
    finally:
        vm.set_instrument(lambda *args: 0)
    return out
