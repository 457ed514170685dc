"""Scoring and constraint checking of whole populations, and bounded sampling of feasible subnets.

One :class:`Evaluator` bundles the accuracy model, the latency model and the cost tables, so the
evolutionary and the NSGA-II searches see the same numbers. OFA's reference code draws random
subnets in an unbounded loop until one meets the budget; here every loop has a bound and an impossible
budget ends with an :class:`OfaDeployError` that names the fastest subnet's latency.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.latency.base import LatencyModel
from ofa_deploy.latency.tables import argmin_additive, cost_tables, lookup
from ofa_deploy.search_space import SearchSpace, get_space
from ofa_deploy.search_space.genes import genes_to_config, layout, random_genes, resolution_indices

from .predictor import AccuracyModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Constraints:
    """Upper bounds (and a lower bound on intensity); ``None`` = unconstrained."""

    latency_ms: float | None = None
    max_macs: float | None = None
    max_params: float | None = None
    min_intensity: float | None = None  # ops/byte at the target's deployed precision

    def active(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.active()}


@dataclass
class Scored:
    """A batch of subnets and their numbers (parallel arrays)."""

    genes: np.ndarray
    acc: np.ndarray
    latency: np.ndarray
    macs: np.ndarray
    params: np.ndarray
    intensity: np.ndarray

    def __len__(self) -> int:
        return len(self.genes)

    def take(self, idx: np.ndarray | slice) -> "Scored":
        return Scored(*(getattr(self, f.name)[idx] for f in fields(self)))

    @staticmethod
    def concat(parts: list["Scored"]) -> "Scored":
        return Scored(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Scored)))


class Evaluator:
    """Vectorised accuracy / latency / cost evaluation under a set of constraints."""

    def __init__(self, space: str | SearchSpace, accuracy: AccuracyModel, latency: LatencyModel,
                 constraints: Constraints = Constraints(), n_classes: int | None = None) -> None:
        self.space = get_space(space)
        if getattr(accuracy, "space", self.space.name) != self.space.name:
            raise OfaDeployError(f"accuracy predictor is for space {accuracy.space!r}, not {self.space.name!r}")
        for name, value in constraints.as_dict().items():
            if not (value > 0):
                raise OfaDeployError(f"constraint {name} must be positive, got {value}")
        self.accuracy, self.latency, self.constraints = accuracy, latency, constraints
        self.costs = cost_tables(self.space, n_classes)
        self.layout = layout(self.space)
        # A latency model may cover only some resolutions (a profiled one): search stays inside them.
        self.r_choices = resolution_indices(self.space, getattr(latency, "resolutions", None))
        self.evaluations = 0  # accuracy predictions made (the search-speed unit)
        names = {"latency_ms": "latency", "max_macs": "macs", "max_params": "params", "min_intensity": "intensity"}
        self._needed = tuple(names[c] for c in constraints.active())

    # -- scoring ----------------------------------------------------------------------------------
    def metrics(self, genes: np.ndarray, which: tuple[str, ...] = ("latency", "macs", "params", "intensity")
                ) -> dict[str, np.ndarray]:
        """The named per-row numbers (only those: feasibility checks need one or two)."""
        out: dict[str, np.ndarray] = {}
        if "latency" in which:
            out["latency"] = self.latency.predict(genes)
        if "macs" in which or "intensity" in which:
            out["macs"] = lookup(genes, *self.costs.macs, self.space)
        if "params" in which:
            out["params"] = lookup(genes, *self.costs.params, self.space)
        if "intensity" in which:
            nbytes = lookup(genes, *self.costs.elems, self.space) * self.latency.dtype_bytes
            out["intensity"] = 2 * out["macs"] / nbytes
        return out

    def violations(self, m: dict[str, np.ndarray]) -> np.ndarray:
        """(N, n_active) relative violations, <= 0 when satisfied (pymoo's G convention)."""
        cons, cols = self.constraints, []
        if cons.latency_ms is not None:
            cols.append(m["latency"] / cons.latency_ms - 1)
        if cons.max_macs is not None:
            cols.append(m["macs"] / cons.max_macs - 1)
        if cons.max_params is not None:
            cols.append(m["params"] / cons.max_params - 1)
        if cons.min_intensity is not None:
            cols.append(1 - m["intensity"] / cons.min_intensity)
        n = len(next(iter(m.values()))) if m else 0
        return np.stack(cols, axis=1) if cols else np.zeros((n, 0))

    def allowed(self, genes: np.ndarray) -> np.ndarray:
        """Rows whose resolution the latency model covers (all rows for analytic models)."""
        if self.r_choices is None:
            return np.ones(len(genes), dtype=bool)
        return np.isin(genes[:, self.layout.r], self.r_choices)

    def feasible(self, genes: np.ndarray, m: dict[str, np.ndarray] | None = None) -> np.ndarray:
        if not self._needed:
            return self.allowed(genes)
        m = m if m is not None else self.metrics(genes, self._needed)
        return np.all(self.violations(m) <= 0, axis=1) & self.allowed(genes)

    def score(self, genes: np.ndarray, m: dict[str, np.ndarray] | None = None) -> Scored:
        m = m if m is not None else self.metrics(genes)
        self.evaluations += len(genes)
        return Scored(genes, self.accuracy.predict(genes), m["latency"], m["macs"], m["params"], m["intensity"])

    # -- feasibility ------------------------------------------------------------------------------
    def fastest(self) -> tuple[float, np.ndarray]:
        """Fastest subnet (ms, genes): exact for table models, else the best of a bounded search."""
        if hasattr(self.latency, "fastest"):
            return self.latency.fastest()
        rng = np.random.default_rng(0)
        sp = self.space
        lay = self.layout
        r_idx = np.arange(len(sp.resolution_choices)) if self.r_choices is None else self.r_choices
        mins = np.zeros((len(r_idx), lay.n_genes), dtype=np.int8)  # min subnet per resolution
        mins[:, lay.r] = r_idx
        cands = np.concatenate([mins] + [random_genes(rng, 2000, sp, bias=b, r_choices=self.r_choices)
                                         for b in (1.0, 2.0, 4.0)])
        lat = self.latency.predict(cands)
        i = int(np.argmin(lat))
        return float(lat[i]), cands[i]

    def check_satisfiable(self) -> None:
        """Raise a one-line error if a single constraint cannot be met by any subnet in the space."""
        cons, target = self.constraints, self.latency.target
        if cons.latency_ms is not None:
            best, row = self.fastest()
            if best > cons.latency_ms:
                cfg = genes_to_config(row, self.space)
                raise OfaDeployError(
                    f"latency budget {cons.latency_ms:g} ms is infeasible on {target}: the fastest subnet takes "
                    f"{best:.3f} ms ({self.latency.source}; {cfg.id}, d={list(cfg.d)} at {cfg.image_size}px)")
        for name, table, what in (("max_macs", self.costs.macs, "MACs"), ("max_params", self.costs.params, "parameters")):
            bound = getattr(cons, name)
            if bound is not None:
                best, _ = argmin_additive(*table, self.space)
                if best > bound:
                    raise OfaDeployError(f"{name} {bound:g} is infeasible: the smallest subnet has {best:.0f} {what}")

    def sample_feasible(self, rng: np.random.Generator, n: int, *, batch: int = 2000, rounds: int = 12,
                        mutate: Callable[[np.random.Generator, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """``n`` feasible gene rows from at most ``rounds`` batches, then bounded refills.

        Rounds start uniform (OFA's sampler) and tilt towards small choices when few samples pass,
        so tight budgets are reached without an unbounded loop. If still short, feasible samples
        are mutated (``mutate``) or repeated. Raises if nothing feasible is found at all.
        """
        self.check_satisfiable()
        found: list[np.ndarray] = []
        total, seen_intensity = 0, 0.0
        for i in range(rounds):
            bias = 0.0 if i < 2 else 0.5 * (i - 1)
            cand = random_genes(rng, batch, self.space, bias=bias, r_choices=self.r_choices)
            m = self.metrics(cand)
            seen_intensity = max(seen_intensity, float(m["intensity"].max()))
            ok = self.feasible(cand, m)
            found.append(cand[ok])
            total += int(ok.sum())
            if total >= n:
                break
        for name, table in (("latency", None), ("macs", self.costs.macs), ("params", self.costs.params)):
            row = self.fastest()[1] if name == "latency" else argmin_additive(*table, self.space)[1]
            if self.feasible(row[None])[0]:
                found.append(row[None])
        pool = np.concatenate(found) if found else np.zeros((0, self.layout.n_genes), dtype=np.int8)
        if len(pool) == 0:
            cons = self.constraints
            fastest = self.fastest()[0]
            extra = (f"; the highest intensity seen in {rounds * batch} samples is {seen_intensity:.2f} ops/byte"
                     if cons.min_intensity is not None else "")
            raise OfaDeployError(
                f"no subnet meets all constraints together ({', '.join(f'{k}={v:g}' for k, v in cons.as_dict().items())})"
                f" on {self.latency.target}: fastest subnet {fastest:.3f} ms{extra}")
        if len(pool) < n and mutate is not None:
            for _ in range(rounds):  # bounded: grow the pool by mutating what we have
                kids = mutate(rng, pool[rng.integers(len(pool), size=n)])
                pool = np.concatenate([pool, kids[self.feasible(kids)]])
                if len(pool) >= n:
                    break
        if len(pool) < n:
            log.warning("only %d distinct feasible subnets found for a population of %d; repeating some",
                        len(pool), n)
            pool = pool[np.resize(np.arange(len(pool)), n)]
        return pool[:n]
