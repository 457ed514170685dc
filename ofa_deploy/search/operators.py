"""OFA's mutation and crossover, on whole gene arrays at once.

Semantics follow ``EvolutionFinder`` / ``MobileNetArchEncoder`` of the official code: mutation
resamples the resolution, each block slot's (kernel, expand) pair and each stage's depth, each
with probability ``prob``; crossover takes every gene from one of the two parents at random.
"""

from __future__ import annotations

import numpy as np

from ofa_deploy.search_space import SearchSpace
from ofa_deploy.search_space.genes import layout


def mutate(rng: np.random.Generator, parents: np.ndarray, space: str | SearchSpace, prob: float,
           r_choices: np.ndarray | None = None) -> np.ndarray:
    """OFA's mutation; ``r_choices`` (allowed resolution indices) keeps the resolution among them."""
    lay = layout(space)
    nc = lay.n_choices
    kids = parents.copy()
    n, nb, ns = len(kids), lay.n_blocks, lay.n_stages
    res = rng.random(n) < prob
    if r_choices is None:
        kids[res, lay.r] = rng.integers(nc[lay.r], size=int(res.sum()))
    else:
        kids[res, lay.r] = np.asarray(r_choices)[rng.integers(len(r_choices), size=int(res.sum()))]
    blk = rng.random((n, nb)) < prob  # kernel and expand of a slot are resampled together, as in OFA
    kids[:, lay.ks] = np.where(blk, rng.integers(nc[lay.ks.start], size=(n, nb)), kids[:, lay.ks])
    kids[:, lay.e] = np.where(blk, rng.integers(nc[lay.e.start], size=(n, nb)), kids[:, lay.e])
    stg = rng.random((n, ns)) < prob
    kids[:, lay.d] = np.where(stg, rng.integers(nc[lay.d.start], size=(n, ns)), kids[:, lay.d])
    return kids


def crossover(rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(rng.random(a.shape) < 0.5, a, b)
