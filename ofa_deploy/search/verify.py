"""``--verify-top K``: re-check the best candidates with a real measurement, through a hook.

Search ranks subnets with modelled latency. Verification hands the K most accurate candidates to a
``measure(cfg) -> (latency_ms, source)`` callable (compile + run on the device, or an emulator)
and keeps the most accurate one whose *measured* latency meets the budget. The compile module
provides the callable as ``ofa_deploy.deploy.make_measure(target) -> measure | None`` (None: no
device reachable for that target); nothing here imports TVM.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.latency.base import SOURCES
from ofa_deploy.latency.vta import BOARDS
from ofa_deploy.search_space import SubnetConfig

from .result import SearchResult

log = logging.getLogger(__name__)

Measure = Callable[[SubnetConfig], tuple[float, str]]


def find_measure(target: str, rpc: str | None = None) -> Measure | None:
    """The compile module's measure hook for ``target`` (on the ``rpc`` device if given), or None if
    no device can be reached."""
    if target in BOARDS:
        return None  # VTA is an analytic model: there is no board to run on
    from ofa_deploy.deploy import make_measure

    return make_measure(target, rpc)


def verify_top(result: SearchResult, k: int, measure: Measure, latency_budget_ms: float | None = None) -> SearchResult:
    """Measure the top-``k`` candidates; make the most accurate one within budget the result."""
    if k < 1:
        raise OfaDeployError(f"--verify-top must be >= 1, got {k}")
    cands = result.candidates
    rows: list[dict[str, Any]] = []
    measured = np.full(len(cands), np.nan)
    for i in range(min(k, len(cands))):
        cfg = result.config(cands, i)
        ms, source = measure(cfg)
        if source not in SOURCES:
            raise ValueError(f"measure() returned source {source!r}; expected one of {SOURCES}")
        if source != "measured":  # an emulator's or a model's number is not a speed to re-rank on
            raise OfaDeployError(f"--verify-top: {cfg.id} got a {source!r} latency, not a measured one; "
                                 "re-ranking needs a real device (local, or --rpc to a board)")
        measured[i] = ms
        rows.append({"id": cfg.id, "predicted_accuracy": round(float(cands.acc[i]), 5),
                     "model_latency_ms": round(float(cands.latency[i]), 4), "latency_ms": round(float(ms), 4),
                     "latency_source": source})
        log.info("verify %d/%d %s: modelled %.3f ms, %s %.3f ms", i + 1, k, cfg.id, cands.latency[i], source, ms)
    ok = np.flatnonzero(~np.isnan(measured) & ((measured <= latency_budget_ms) if latency_budget_ms else True))
    if len(ok) == 0:
        raise OfaDeployError(f"none of the top {len(rows)} subnets meets the {latency_budget_ms:g} ms budget when "
                             f"measured (fastest measured {np.nanmin(measured):.3f} ms)")
    i = int(ok[np.argmax(cands.acc[ok])])
    best = cands.take(np.array([i]))
    best.latency = measured[[i]]
    result.best = best
    result.latency_source = rows[i]["latency_source"]
    result.verified = rows
    return result
