"""Is this CPU running at its own speed right now? A tiny parallel kernel that says so (worker-only: imports TVM).

On a shared VM the host takes part of a core away for tens of seconds at a time. Measured on the
2-core development VM (BENCHMARKS.md, "Timing in the machine's steady state"): a compiled subnet
then runs 1.3-1.6x slow, and not by one factor for all models (the smaller the model, the larger
the factor), so a slow timing cannot be scaled back; it has to be recognised and repeated.

The probe is what suffers most in that state: a parallel elementwise kernel too small to do real
work, launched :data:`LAUNCHES` times, so its time per launch is the thread pool's fork/join
cost. It read 1.4-1.6 us per launch in the fast state and 2.5-2.9 us in the slow one, switching
exactly when a subnet timed in the same process switched. One reading costs ~1 ms.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, TypeVar

import numpy as np
import tvm
from tvm import s_tir, te

from ofa_deploy.compile.speed import is_contended

ELEMENTS = 1 << 15  # 128 KiB of float32: a few us of work split over the pool
LAUNCHES = 200  # launches per reading sample
SAMPLES = 3  # samples per reading (their median)
POLL_S = 0.25  # pause between readings while waiting for the steady state

T = TypeVar("T")


class SpeedProbe:
    """The probe kernel, built once per worker process for this machine's CPU."""

    def __init__(self) -> None:
        a = te.placeholder((ELEMENTS,), name="A")
        b = te.compute((ELEMENTS,), lambda i: a[i] * 2.0 + 1.0, name="B")
        sch = s_tir.Schedule(te.create_prim_func([a, b]).with_attr("global_symbol", "probe"))
        (loop,) = sch.get_loops(sch.get_sblock("B"))
        outer, inner = sch.split(loop, [None, 16])
        sch.parallel(outer)
        sch.vectorize(inner)
        self._lib = tvm.compile(sch.mod, target=tvm.target.Target({"kind": "llvm"})).jit()
        dev = tvm.cpu(0)
        self._args = (tvm.runtime.tensor(np.ones(ELEMENTS, "float32"), dev),
                      tvm.runtime.tensor(np.zeros(ELEMENTS, "float32"), dev))
        self._evaluator = self._lib.time_evaluator("probe", dev, number=LAUNCHES, repeat=SAMPLES)
        self.lowest_us = float("inf")  # the lowest reading of this process
        self.read_us()  # the pool's threads start on the first launch: not a reading

    def read_us(self) -> float:
        """Microseconds per launch now (median of :data:`SAMPLES`)."""
        reading = statistics.median(self._evaluator(*self._args).results) * 1e6
        self.lowest_us = min(self.lowest_us, reading)
        return reading

    def before_each(self, sample: Callable[[], T], times: int, readings: list[float]) -> list[T]:
        """``sample()`` ``times`` times, each right after a reading (appended to ``readings``)."""
        results = []
        for _ in range(times):
            readings.append(self.read_us())
            results.append(sample())
        return results

    def wait_steady(self, floor_us: float | None, max_wait_s: float) -> float:
        """Read until the machine is in its steady state (against ``floor_us``, else this process's lowest
        reading) or ``max_wait_s`` has passed; the last reading."""
        deadline = time.monotonic() + max_wait_s
        reading = self.read_us()
        while is_contended(reading, self.floor(floor_us)) and time.monotonic() < deadline:
            time.sleep(POLL_S)
            reading = self.read_us()
        return reading

    def floor(self, floor_us: float | None) -> float:
        """The steady-state reading as known here: the parent's (all earlier runs) or this process's, the lower."""
        return min(self.lowest_us, floor_us) if floor_us else self.lowest_us
