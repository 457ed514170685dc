"""Each kernel's time inside a running network: a Relax VM instrument around every call (benches only).

``time_evaluator`` on one kernel times it warm, rerun back to back; inside a network its inputs
were just written by the previous kernel and its weights and output come from wherever the rest
of the network left them. This times the calls where they happen. The instrument's own cost
(a Python call before and after each kernel, a few microseconds) is inside every figure.
"""

from __future__ import annotations

import time
from typing import Any


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
