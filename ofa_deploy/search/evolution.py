"""OFA's evolutionary search (``EvolutionFinder.run_evolution_search``), vectorised and bounded.

Same algorithm and defaults as the official code: a feasible random population of 100; each of
500 generations keeps the best 25 % as parents and breeds 50 % of the population by mutation
(probability 0.1 per gene group) and the rest by crossover; children must meet the constraints.
Differences, both for deployment: a whole generation is scored in one predictor call (50,000
evaluations take about a second, not minutes), and an infeasible child is re-drawn at most
``max_retries`` times and then replaced by its (feasible) parent, instead of looping forever.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

from .evaluator import Evaluator, Scored
from .operators import crossover, mutate
from .predictor import torch_threads
from .result import SearchResult, front_2d, top_k

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvolutionConfig:
    """Evolution settings; defaults are the official OFA ones."""

    population: int = 100  # OFA population_size
    generations: int = 500  # OFA max_time_budget
    parent_ratio: float = 0.25  # OFA parent_ratio
    mutation_ratio: float = 0.5  # OFA mutation_ratio
    mutate_prob: float = 0.1  # OFA mutate_prob
    max_retries: int = 20  # re-draws of an infeasible child before it is replaced by its parent
    seed: int = 0
    top_k: int = 10  # distinct most-accurate subnets kept for verification

    def __post_init__(self) -> None:
        if self.population < 4 or self.generations < 1:
            raise ValueError("population must be >= 4 and generations >= 1")
        if not (0 < self.parent_ratio <= 1 and 0 <= self.mutation_ratio <= 1 and 0 <= self.mutate_prob <= 1):
            raise ValueError("parent_ratio in (0, 1], mutation_ratio and mutate_prob in [0, 1]")


def _bounded_children(ev: Evaluator, make: Callable[[np.ndarray], np.ndarray], n: int, fallback: np.ndarray,
                      retries: int) -> np.ndarray:
    """``make(positions)`` draws children for those positions; redraw infeasible ones, boundedly."""
    kids = make(np.arange(n))
    ok = ev.feasible(kids)
    for _ in range(retries):
        if ok.all():
            break
        bad = np.flatnonzero(~ok)
        kids[bad] = make(bad)
        ok[bad] = ev.feasible(kids[bad])
    kids[~ok] = fallback[~ok]
    return kids


def evolution_search(ev: Evaluator, config: EvolutionConfig = EvolutionConfig(), *,
                     progress: bool | None = False) -> SearchResult:
    """Most accurate subnet under ``ev.constraints`` (predicted accuracy, modelled latency)."""
    with torch_threads(1):
        return _evolution(ev, config, progress)


def _evolution(ev: Evaluator, config: EvolutionConfig, progress: bool | None) -> SearchResult:
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    sp = ev.space.name
    n_parents = max(1, int(round(config.parent_ratio * config.population)))
    n_mut = int(round(config.mutation_ratio * config.population))
    n_cross = config.population - n_mut
    mut = lambda r, g: mutate(r, g, sp, config.mutate_prob, ev.r_choices)  # noqa: E731

    pop = ev.score(ev.sample_feasible(rng, config.population, mutate=mut))
    archive = [pop]
    history: list[float] = []
    best = pop.take(slice(0, 0))
    bar = tqdm(range(config.generations), desc="evolution", file=sys.stderr, leave=False,
               disable=None if progress is None else not progress)  # None: only on a terminal
    for _ in bar:
        parents = pop.take(np.argsort(-pop.acc, kind="stable")[:n_parents])
        if len(best) == 0 or parents.acc[0] > best.acc[0]:
            best = parents.take(slice(0, 1))
        history.append(float(best.acc[0]))
        pm = parents.genes[rng.integers(n_parents, size=n_mut)]
        kids_m = _bounded_children(ev, lambda pos: mut(rng, pm[pos]), n_mut, pm, config.max_retries)
        p1 = parents.genes[rng.integers(n_parents, size=n_cross)]
        p2 = parents.genes[rng.integers(n_parents, size=n_cross)]
        kids_c = _bounded_children(ev, lambda pos: crossover(rng, p1[pos], p2[pos]), n_cross, p1,
                                   config.max_retries)
        children = ev.score(np.concatenate([kids_m, kids_c]))
        archive.append(children)
        pop = Scored.concat([parents, children])
    i = int(np.argmax(pop.acc))
    if pop.acc[i] > best.acc[0]:
        best = pop.take(slice(i, i + 1))
    everything = Scored.concat(archive)
    seconds = time.perf_counter() - t0
    basis = getattr(ev.latency, "basis", None)
    log.info("evolution: %d evaluations in %.2f s, best predicted accuracy %.4f at %.3f ms (%s%s)",
             ev.evaluations, seconds, best.acc[0], best.latency[0], ev.latency.source, f": {basis}" if basis else "")
    return SearchResult(
        space=sp, target=ev.latency.target, latency_source=ev.latency.source, dtype_bytes=ev.latency.dtype_bytes,
        latency_basis=basis,
        objective="accuracy", best=best, front=front_2d(everything, sp), candidates=top_k(everything, sp, config.top_k),
        settings={"algorithm": "evolution", **asdict(config), "constraints": ev.constraints.as_dict()},
        history=history, evaluations=ev.evaluations, seconds=seconds,
    )
