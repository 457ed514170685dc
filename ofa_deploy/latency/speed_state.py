"""Latencies at one speed of the machine: scaling timings by the speed probe's reading (no TVM).

On a shared VM the *steady* state itself drifts: the speed probe (``compile.speed``) read 1.6-2.0 us
per launch over one afternoon on the development machine while the same subnets ran ~10 % slower at
the top of that range. Dropping contended samples (``compile.speed``) removes the slow spells but not
this drift, so a latency model profiled in one hour and checked in the next disagrees by the drift,
whatever the model (BENCHMARKS.md, "Timing in the machine's steady state").

A latency model therefore refers its numbers to one speed state, the *reference*: the lowest probe
reading among its own timings. A timing ``t`` taken at probe reading ``p`` is referred to it as::

    t_ref = t * (reference / p) ** k

``k`` (the elasticity: how strongly a subnet's time follows the probe) is fitted on the profile's
calibration subnets, each timed in several passes at several readings: the within-subnet
regression of log time on log reading, pooled over subnets (the subnets' own sizes drop out),
then shrunk toward 1 (time proportional to the reading) by its own precision (:func:`shrunk`).
Why shrink: 12 subnets x 3 passes give a slope with a standard error of 0.2-0.4, the probe's own
noise biases it toward 0, and on one CPU five calibrations fitted 0.37 to 1.77. Scored on the
accuracy rows of six models (``bench/elasticity.py``; BENCHMARKS.md, "`profile --recalibrate`, and
how strongly latency follows the speed probe"), the raw fits put 63 % of unseen subnets within
+-10 %, k = 1 for all 72.5 %, the shrunk fits 72 %.
Each model's table entry is then the median of its scaled steady passes. The reference and ``k``
live in the model file (``speed_scaling``), so ``compile --measure`` and the accuracy bench can
say what the model predicts *at the reading they measured at* (:meth:`SpeedScaling.at`): both
numbers are shown, the measured one stays ``measured``.

Timings without probe readings (a board over RPC, a GPU) are not scaled: their model keeps the
fastest steady pass, as before.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ofa_deploy.compile.speed import steady_passes_mask

# A fit needs this many passes in subnets with at least two steady passes, and readings that vary
# within subnets by at least this much (rms of log reading around each subnet's mean): with less,
# the slope is noise and k falls back to DEFAULT_ELASTICITY.
MIN_FIT_PASSES = 6
MIN_LOG_SPREAD = 0.01
DEFAULT_ELASTICITY = 1.0  # time proportional to the probe's reading: the neutral guess
PRIOR_SD = 0.1  # how far k is believed to stray from DEFAULT_ELASTICITY before a fit says otherwise
ELASTICITY_BOUNDS = (0.0, 3.0)  # a fitted slope outside this is a fluke of a few passes: clipped

Pass = tuple[float, float | None]  # (pass median ms, probe reading us or None)


def steady_passes(passes: Sequence[Pass]) -> list[Pass]:
    """The passes not timed contended, judged against the calmest of them (``compile.speed.steady_passes_mask``)."""
    return [pass_ for pass_, ok in zip(passes, steady_passes_mask([p for _, p in passes])) if ok]


def fastest_steady(passes: Sequence[Pass]) -> float:
    """The fastest steady pass: an entry's latency where nothing is scaled (``compile.profile.fastest_pass``)."""
    return min(ms for ms, _ in steady_passes(passes))


def probed(passes: Sequence[Pass]) -> bool:
    """Whether every pass carries a probe reading (only such entries are scaled)."""
    return bool(passes) and all(p is not None and p > 0 for _, p in passes)


@dataclass(frozen=True)
class SpeedScaling:
    """How timings taken at one probe reading are referred to the model's reference speed state."""

    reference_us: float  # the probe reading the model's latencies refer to (lowest of its own timings)
    elasticity: float  # k: d log(latency) / d log(probe reading)
    fitted: bool  # False: too few or too similar readings to fit k, DEFAULT_ELASTICITY used
    n_passes: int  # calibration passes behind the fit
    stderr: float | None  # standard error of the fitted k (None when not fitted)
    fitted_k: float | None = None  # the fit before shrinking toward DEFAULT_ELASTICITY (None: not fitted, or a
    #                                model from before the shrinking, whose elasticity is its raw fit)

    def factor(self, probe_us: float) -> float:
        """Multiply a timing taken at ``probe_us`` by this to refer it to the reference state."""
        return (self.reference_us / probe_us) ** self.elasticity

    def at(self, reference_ms: float, probe_us: float) -> float:
        """A latency of the reference state as it would be timed at ``probe_us``."""
        return reference_ms / self.factor(probe_us)

    def timing(self, passes: Sequence[Pass]) -> float:
        """One entry's latency at the reference state: the median of its steady passes, each scaled.

        Entries with an unprobed pass are not scaled: their fastest steady pass.
        """
        steady = steady_passes(passes)
        if not probed(steady):
            return fastest_steady(steady)
        return float(statistics.median(referred_steady(steady, self)))

    def describe(self) -> str:
        if self.stderr is None:
            how = f"k {self.elasticity:.2f} (not fitted)"
        elif self.fitted_k is None:
            how = f"k {self.elasticity:.2f} +- {self.stderr:.2f}"
        else:
            how = (f"k {self.elasticity:.2f}: fit {self.fitted_k:.2f} +- {self.stderr:.2f} shrunk toward "
                   f"{DEFAULT_ELASTICITY:g}")
        return f"referred to probe {self.reference_us:.2f} us ({how})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "SpeedScaling | None":
        if not data:
            return None
        return cls(float(data["reference_us"]), float(data["elasticity"]), bool(data["fitted"]),
                   int(data["n_passes"]), None if data.get("stderr") is None else float(data["stderr"]),
                   None if data.get("fitted_k") is None else float(data["fitted_k"]))

    @classmethod
    def fit(cls, groups: Sequence[Sequence[Pass]], reference_us: float) -> "SpeedScaling":
        """k from ``groups`` (each one subnet's passes): pooled within-subnet least squares, bounded, then
        :func:`shrunk` toward DEFAULT_ELASTICITY by its standard error."""
        xs, ys = [], []
        for passes in groups:
            steady = steady_passes(passes)
            if len(steady) >= 2 and probed(steady):
                logp = np.log([p for _, p in steady])
                logt = np.log([ms for ms, _ in steady])
                xs.append(logp - logp.mean())
                ys.append(logt - logt.mean())
        x = np.concatenate(xs) if xs else np.zeros(0)
        y = np.concatenate(ys) if ys else np.zeros(0)
        if len(x) < MIN_FIT_PASSES or math.sqrt(float(x @ x) / len(x)) < MIN_LOG_SPREAD:
            return cls(reference_us, DEFAULT_ELASTICITY, False, len(x), None)
        k = float(x @ y / (x @ x))
        dof = max(1, len(x) - len(xs) - 1)  # one mean per subnet and the slope
        stderr = math.sqrt(float(((y - k * x) ** 2).sum()) / dof / float(x @ x))
        k = float(np.clip(k, *ELASTICITY_BOUNDS))
        return cls(reference_us, shrunk(k, stderr), True, len(x), stderr, k)


def shrunk(k: float, stderr: float) -> float:
    """A fitted elasticity moved toward DEFAULT_ELASTICITY by how little its fit knows: the precision-weighted
    mean of the fit (variance ``stderr**2``) and the prior (variance ``PRIOR_SD**2``). An exact fit keeps its k."""
    weight = PRIOR_SD ** 2 / (PRIOR_SD ** 2 + stderr ** 2)
    return DEFAULT_ELASTICITY + weight * (k - DEFAULT_ELASTICITY)


def kept_timing(passes: Sequence[Pass], scaling: SpeedScaling | None) -> float:
    """An entry's latency from its passes, the one way ``profile`` keeps tables and the benches keep subnets:
    referred to ``scaling``'s speed state when there is one, else the fastest steady pass."""
    return scaling.timing(passes) if scaling is not None else fastest_steady(passes)


def referred_steady(passes: Sequence[Pass], scaling: SpeedScaling | None) -> list[float]:
    """An entry's steady passes, each referred to ``scaling``'s speed state where all are probed (as
    :meth:`SpeedScaling.timing` takes them before their median), else as timed."""
    steady = steady_passes(passes)
    refer = scaling is not None and probed(steady)
    return [ms * scaling.factor(p) if refer else ms for ms, p in steady]


def pass_scatter_pct(groups: Sequence[Sequence[Pass]], scaling: SpeedScaling | None) -> float | None:
    """How much an entry's own passes disagree once referred: the median, over entries with two or more steady
    passes, of the sd of their log (%). The device's repeatability, under any model's error; None: no such entry."""
    sds = [float(np.std(np.log(values), ddof=1)) for values in (referred_steady(g, scaling) for g in groups)
           if len(values) >= 2]
    return 100 * float(np.median(sds)) if sds else None


def lowest_reading(groups: Sequence[Sequence[Pass]]) -> float | None:
    """The lowest probe reading of all passes (None: nothing was probed)."""
    readings = [p for passes in groups for _, p in passes if p is not None and p > 0]
    return min(readings) if readings else None


def passes_of(entry: dict[str, Any]) -> list[Pass]:
    """(ms, probe) of a model entry's stored passes (workload record or calibration point)."""
    return [(float(p["median_ms"]), p.get("probe_us")) for p in entry.get("passes", [])]


__all__ = ["DEFAULT_ELASTICITY", "Pass", "SpeedScaling", "fastest_steady", "lowest_reading", "pass_scatter_pct",
           "passes_of", "probed", "referred_steady", "shrunk", "steady_passes"]
