"""Multi-objective search with pymoo's NSGA-II: the accuracy / latency / intensity Pareto front.

pymoo does selection, non-dominated sorting, crowding distance and constraint domination; we
supply the problem (vectorised evaluation of a whole population), OFA's mutation as a pymoo
``Mutation`` and a feasible initial population. Objectives (all minimised): -accuracy, latency,
-arithmetic intensity (intensity is maximised: on accelerators high-intensity networks keep the
compute units busy instead of waiting on DRAM).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.search_space.genes import GENE_DTYPE

from .evaluator import Evaluator
from .operators import mutate
from .predictor import torch_threads
from .result import SearchResult, top_k

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NsgaConfig:
    """NSGA-II settings; population and generations default to OFA's evolution budget."""

    population: int = 100
    generations: int = 500
    mutate_prob: float = 0.1  # OFA's per gene-group resampling probability
    seed: int = 0
    top_k: int = 10


def _pymoo():
    try:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.callback import Callback
        from pymoo.core.mutation import Mutation
        from pymoo.core.problem import Problem
        from pymoo.operators.crossover.ux import UniformCrossover
        from pymoo.optimize import minimize
    except ImportError:
        raise OfaDeployError("--objective pareto needs pymoo (pip install 'pymoo>=0.6.1')") from None
    return NSGA2, Callback, Mutation, Problem, UniformCrossover, minimize


def nsga_search(ev: Evaluator, config: NsgaConfig = NsgaConfig(), *, progress: bool | None = False) -> SearchResult:
    """Pareto front of (predicted accuracy, latency, intensity) under ``ev.constraints``."""
    NSGA2, Callback, Mutation, Problem, UniformCrossover, minimize = _pymoo()
    sp = ev.space.name
    nc = ev.layout.n_choices
    n_constr = len(ev.constraints.active())

    class SubnetProblem(Problem):
        def __init__(self) -> None:
            super().__init__(n_var=len(nc), n_obj=3, n_ieq_constr=n_constr, xl=np.zeros(len(nc)), xu=nc - 1,
                             vtype=int)

        def _evaluate(self, x, out, *args, **kwargs):
            genes = np.rint(x).astype(GENE_DTYPE)
            m = ev.metrics(genes)
            s = ev.score(genes, m)
            out["F"] = np.column_stack([-s.acc, s.latency, -s.intensity])
            if n_constr:
                out["G"] = ev.violations(m)

    class OfaMutation(Mutation):
        def _do(self, problem, x, *args, random_state=None, **kwargs):
            return mutate(random_state, np.rint(x).astype(GENE_DTYPE), sp, config.mutate_prob,
                          ev.r_choices).astype(x.dtype)

    class Progress(Callback):
        def __init__(self, bar) -> None:
            super().__init__()
            self.bar = bar

        def notify(self, algorithm):
            self.bar.update(1)

    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    x0 = ev.sample_feasible(rng, config.population,
                            mutate=lambda r, g: mutate(r, g, sp, config.mutate_prob, ev.r_choices)).astype(np.float64)
    algorithm = NSGA2(pop_size=config.population, sampling=x0, crossover=UniformCrossover(),
                      mutation=OfaMutation(), eliminate_duplicates=True)
    with torch_threads(1), tqdm(total=config.generations, desc="nsga2", file=sys.stderr, leave=False,
                                disable=None if progress is None else not progress) as bar:
        res = minimize(SubnetProblem(), algorithm, ("n_gen", config.generations), seed=config.seed,
                       callback=Progress(bar), verbose=False)
    opt = res.opt if res.opt is not None else res.pop
    genes = np.rint(opt.get("X")).astype(GENE_DTYPE)
    front = ev.score(genes)
    ok = ev.feasible(genes)
    front = front.take(np.flatnonzero(ok))
    if len(front) == 0:
        raise OfaDeployError("NSGA-II ended without a feasible subnet; relax the constraints")
    front = top_k(front, sp, len(front))  # distinct networks
    front = front.take(np.lexsort((-front.acc, front.latency)))
    best = front.take(np.array([int(np.argmax(front.acc))]))
    seconds = time.perf_counter() - t0
    evaluations = ev.evaluations - len(genes)  # the rescoring above is bookkeeping, not search
    basis = getattr(ev.latency, "basis", None)
    log.info("nsga2: %d evaluations in %.2f s, front of %d subnets (%s%s)", evaluations, seconds, len(front),
             ev.latency.source, f": {basis}" if basis else "")
    return SearchResult(
        space=sp, target=ev.latency.target, latency_source=ev.latency.source, dtype_bytes=ev.latency.dtype_bytes,
        latency_basis=basis,
        objective="pareto", best=best, front=front, candidates=top_k(front, sp, config.top_k),
        settings={"algorithm": "nsga2 (pymoo)", **asdict(config), "constraints": ev.constraints.as_dict()},
        evaluations=evaluations, seconds=seconds,
    )
