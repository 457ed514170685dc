"""``--verify-top K``: re-check the best candidates with a real measurement, through a hook.

Search ranks subnets with modelled latency. Verification hands the K most accurate candidates to a
``measure(cfg) -> (latency_ms, source)`` callable (compile + run on the device, or an emulator)
and keeps the most accurate one whose *measured* latency meets the budget. The compile module
provides the callable as ``ofa_deploy.deploy.make_measure(target) -> measure | None`` (None: no
device reachable for that target); nothing here imports TVM.

A model can be far off on the device it is checked on (another CPU's tables: 3.8x on a znver3 with
znver5's model). Measuring then shows it, and :func:`verify_search` uses what it showed: the search
runs again on the model scaled by the measured/modelled ratio (:class:`ScaledLatency`) and measures
the new picks, for at most :data:`ROUNDS` rounds, so a budget the raw model would miss is still met
(or the user is told, with the numbers, why not).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.latency.base import SOURCES, LatencyModel
from ofa_deploy.latency.vta import BOARDS
from ofa_deploy.search_space import SubnetConfig

from .evaluator import Scored
from .result import SearchResult

log = logging.getLogger(__name__)

Measure = Callable[[SubnetConfig], tuple[float, str]]

ROUNDS = 3  # search + measure rounds at most (each measures up to K new subnets)
CONSISTENT = 0.10  # a model whose scale is within 10 % of what was measured is not re-scaled


def find_measure(target: str, rpc: str | None = None) -> Measure | None:
    """The compile module's measure hook for ``target`` (on the ``rpc`` device if given), or None if
    no device can be reached."""
    if target in BOARDS:
        return None  # VTA is an analytic model: there is no board to run on
    from ofa_deploy.deploy import make_measure

    return make_measure(target, rpc)


class ScaledLatency:
    """Another latency model's estimates times one factor measured on this device.

    What the first verification round learns when the model is another device's: a block-level
    ranking it can keep, a speed it cannot. The scaled numbers are still a model's (``source`` is
    the inner model's) and the basis says how they were scaled.
    """

    def __init__(self, model: LatencyModel, scale: float, n_measured: int) -> None:
        self.model, self.scale = model, float(scale)
        self.source, self.target, self.dtype_bytes = model.source, model.target, model.dtype_bytes
        self.resolutions = getattr(model, "resolutions", None)
        inner = getattr(model, "basis", None) or model.source
        self.basis = f"{inner}; x {self.scale:.2f}: the median measured/modelled ratio of {n_measured} subnets measured here"

    def predict(self, genes: np.ndarray) -> np.ndarray:
        return self.scale * self.model.predict(genes)

    @property
    def fastest(self) -> Callable[[], tuple[float, np.ndarray]]:
        """The inner model's exact fastest subnet, scaled (absent, as ``hasattr`` says, when it has none)."""
        inner = self.model.fastest

        def scaled() -> tuple[float, np.ndarray]:
            ms, row = inner()
            return self.scale * ms, row

        return scaled


@dataclass
class _Measured:
    """One verified candidate: where it sits in its round's candidates, and both latencies."""

    candidates: Scored
    index: int
    config: SubnetConfig
    accuracy: float
    model_ms: float  # the unscaled model's estimate: what the measured/modelled ratio refers to
    ms: float
    source: str
    round: int

    def row(self) -> dict[str, Any]:
        return {"id": self.config.id, "predicted_accuracy": round(self.accuracy, 5),
                "model_latency_ms": round(self.model_ms, 4), "latency_ms": round(self.ms, 4),
                "latency_source": self.source, "round": self.round}


def _measure(result: SearchResult, k: int, measure: Measure, model_ms: np.ndarray, round_: int,
             done: dict[str, _Measured]) -> list[_Measured]:
    """Measure the ``k`` most accurate candidates of ``result`` (those in ``done`` are not measured again)."""
    if k < 1:
        raise OfaDeployError(f"--verify-top must be >= 1, got {k}")
    cands = result.candidates
    out = []
    for i in range(min(k, len(cands))):
        cfg = result.config(cands, i)
        if cfg.id in done:
            out.append(done[cfg.id])
            continue
        ms, source = measure(cfg)
        if source not in SOURCES:
            raise ValueError(f"measure() returned source {source!r}; expected one of {SOURCES}")
        if source != "measured":  # an emulator's or a model's number is not a speed to re-rank on
            raise OfaDeployError(f"--verify-top: {cfg.id} got a {source!r} latency, not a measured one; "
                                 "re-ranking needs a real device (local, or --rpc to a board)")
        done[cfg.id] = m = _Measured(cands, i, cfg, float(cands.acc[i]), float(model_ms[i]), float(ms), source, round_)
        out.append(m)
        log.info("verify %d/%d %s: modelled %.3f ms, %s %.3f ms", i + 1, k, cfg.id, cands.latency[i], source, ms)
    return out


def _best(result: SearchResult, measured: list[_Measured], budget_ms: float | None) -> SearchResult | None:
    """``result`` with the most accurate measured subnet within budget as its best (None: none is)."""
    ok = [m for m in measured if budget_ms is None or m.ms <= budget_ms]
    if not ok:
        return None
    pick = max(ok, key=lambda m: m.accuracy)  # max() keeps the first of equals: the higher-ranked one
    best = pick.candidates.take(np.array([pick.index]))
    best.latency = np.array([pick.ms])
    result.best = best
    result.latency_source = pick.source
    result.verified = [m.row() for m in measured]
    return result


def verify_top(result: SearchResult, k: int, measure: Measure, latency_budget_ms: float | None = None) -> SearchResult:
    """Measure the top-``k`` candidates; make the most accurate one within budget the result."""
    measured = _measure(result, k, measure, result.candidates.latency, 1, {})
    best = _best(result, measured, latency_budget_ms)
    if best is None:
        raise OfaDeployError(f"none of the top {len(measured)} subnets meets the {latency_budget_ms:g} ms budget when "
                             f"measured (fastest measured {min(m.ms for m in measured):.3f} ms)")
    return best


def verify_search(search: Callable[[LatencyModel], SearchResult], model: LatencyModel, k: int, measure: Measure,
                  latency_budget_ms: float | None = None) -> SearchResult:
    """Search with ``model``, measure the top ``k``; while the model is off here, search again on it scaled.

    After each round the scale is the median measured/modelled ratio of every subnet measured so
    far. When nothing measured meets the budget, or the scale differs from the one searched with
    by more than :data:`CONSISTENT`, the search runs again on the model at that scale and the next
    round measures its picks not yet measured (at most :data:`ROUNDS` rounds; none new: done).
    The answer is the most accurate measured subnet within the budget, from any round; if none
    is, the error says what was measured and how far off the model is here.
    """
    done: dict[str, _Measured] = {}
    scale = 1.0
    result = search(model)
    for round_ in range(1, ROUNDS + 1):
        _measure(result, k, measure, result.candidates.latency / scale, round_, done)
        measured = list(done.values())
        new_scale = float(np.median([m.ms / m.model_ms for m in measured]))
        if latency_budget_ms is None or round_ == ROUNDS:
            break  # without a budget a scale changes no ranking
        fits = any(m.ms <= latency_budget_ms for m in measured)
        if fits and abs(new_scale / scale - 1) <= CONSISTENT:
            break
        log.info("verify: measured %.2fx the model's estimates on %d subnets; searching again on the scaled model",
                 new_scale, len(measured))
        scale = new_scale
        try:
            again = search(ScaledLatency(model, scale, len(measured)))
        except OfaDeployError as err:  # e.g. the budget is infeasible at the measured speed
            log.warning("verify: the search on the model x %.2f found nothing new (%s)", scale, err)
            break
        if all(again.config(again.candidates, i).id in done for i in range(min(k, len(again.candidates)))):
            break  # the scaled model picks what was measured already
        result = again
    measured = sorted(done.values(), key=lambda m: (m.round, -m.accuracy))
    best = _best(result, measured, latency_budget_ms)
    if best is None:
        ratio = float(np.median([m.ms / m.model_ms for m in measured]))
        fastest = (f"; the fastest subnet of the space would take about {ratio * model.fastest()[0]:.3g} ms here"
                   if hasattr(model, "fastest") else "")
        raise OfaDeployError(
            f"none of the {len(measured)} subnets measured meets the {latency_budget_ms:g} ms budget (fastest measured "
            f"{min(m.ms for m in measured):.3f} ms); on this device they ran {ratio:.2f}x the latency model's estimates "
            f"({getattr(model, 'basis', model.source)}){fastest}: raise the budget, or give this device its own model "
            f"('ofa-deploy profile')")
    return best
