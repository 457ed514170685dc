"""Subnets as rows of a small integer array, so a whole population is costed and mutated at once.

A gene row holds *indices* into the space's choice tuples, in this order::

    [ks index x n_blocks | e index x n_blocks | d index x n_stages | resolution index]

(46 columns for the MobileNetV3 spaces). Python objects per subnet (``SubnetConfig``) are built
only for the few results a search returns; everything in the inner loop is numpy. Search and the
latency models (whose tables a gene row indexes) share this encoding, so it lives with the space.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Iterable

import numpy as np

from .config import SubnetConfig
from .space import SearchSpace, get_space

GENE_DTYPE = np.int8  # every choice tuple has < 128 entries


@dataclass(frozen=True)
class GeneLayout:
    """Column layout of gene arrays for one search space (properties cached: used in hot loops)."""

    space: SearchSpace

    @cached_property
    def n_blocks(self) -> int:
        return self.space.n_blocks

    @cached_property
    def n_stages(self) -> int:
        return self.space.n_stages

    @cached_property
    def n_genes(self) -> int:
        return 2 * self.n_blocks + self.n_stages + 1

    @cached_property
    def ks(self) -> slice:
        return slice(0, self.n_blocks)

    @cached_property
    def e(self) -> slice:
        return slice(self.n_blocks, 2 * self.n_blocks)

    @cached_property
    def d(self) -> slice:
        return slice(2 * self.n_blocks, 2 * self.n_blocks + self.n_stages)

    @cached_property
    def r(self) -> int:
        return self.n_genes - 1

    @cached_property
    def n_choices(self) -> np.ndarray:
        """Number of choices per gene column (the exclusive upper bound of each index)."""
        sp = self.space
        return np.array([len(sp.kernel_choices)] * self.n_blocks + [len(sp.expand_choices)] * self.n_blocks
                        + [len(sp.depth_choices)] * self.n_stages + [len(sp.resolution_choices)], dtype=np.int64)

    def active(self, genes: np.ndarray) -> np.ndarray:
        """Boolean (N, n_blocks): which block slots run (slot ``4*s + j`` runs iff ``j < depth[s]``)."""
        depth = self._depths[genes[:, self.d]]  # (N, n_stages)
        return (self._positions < depth[:, :, None]).reshape(len(genes), self.n_blocks)

    @cached_property
    def _depths(self) -> np.ndarray:
        return np.asarray(self.space.depth_choices)

    @cached_property
    def _positions(self) -> np.ndarray:
        return np.arange(self.space.max_depth)[None, None, :]


@lru_cache(maxsize=None)
def layout(space: str | SearchSpace) -> GeneLayout:
    return GeneLayout(get_space(space))


def configs_to_genes(configs: Iterable[SubnetConfig], space: str | SearchSpace | None = None) -> np.ndarray:
    """Encode configs (all of one space) as an (N, n_genes) index array."""
    configs = list(configs)
    sp = get_space(space or (configs[0].space if configs else None) or SubnetConfig.max().space)
    lay = layout(sp)
    out = np.empty((len(configs), lay.n_genes), dtype=GENE_DTYPE)
    k_of = {v: i for i, v in enumerate(sp.kernel_choices)}
    e_of = {v: i for i, v in enumerate(sp.expand_choices)}
    d_of = {v: i for i, v in enumerate(sp.depth_choices)}
    r_of = {v: i for i, v in enumerate(sp.resolution_choices)}
    for n, cfg in enumerate(configs):
        if cfg.space != sp.name:
            raise ValueError(f"config space {cfg.space!r} differs from {sp.name!r}")
        out[n, lay.ks] = [k_of[k] for k in cfg.ks]
        out[n, lay.e] = [e_of[e] for e in cfg.e]
        out[n, lay.d] = [d_of[d] for d in cfg.d]
        out[n, lay.r] = r_of[cfg.image_size]
    return out


def genes_to_config(row: np.ndarray, space: str | SearchSpace) -> SubnetConfig:
    """Decode one gene row into a validated :class:`SubnetConfig`."""
    sp = get_space(space)
    lay = layout(sp)
    row = np.asarray(row, dtype=np.int64)
    return SubnetConfig(
        ks=tuple(int(sp.kernel_choices[i]) for i in row[lay.ks]),
        e=tuple(int(sp.expand_choices[i]) for i in row[lay.e]),
        d=tuple(int(sp.depth_choices[i]) for i in row[lay.d]),
        image_size=int(sp.resolution_choices[row[lay.r]]),
        space=sp.name,
    ).validate()


def resolution_indices(space: str | SearchSpace, resolutions: Iterable[int] | None) -> np.ndarray | None:
    """Sorted indices of ``resolutions`` among the space's choices; None (all allowed) stays None.

    A latency model that covers only some resolutions (a profiled one) restricts search to them.
    """
    if resolutions is None:
        return None
    sp = get_space(space)
    res = list(resolutions)
    bad = [r for r in res if r not in sp.resolution_choices]
    if bad or not res:
        from ofa_deploy.errors import ConfigError

        rc = sp.resolution_choices
        raise ConfigError(f"resolutions: {bad[0] if bad else 'none given'} is not a resolution of {sp.name}; "
                          f"allowed: {rc[0]}..{rc[-1]} in steps of {rc[1] - rc[0]}")
    return np.array(sorted({sp.resolution_choices.index(r) for r in res}), dtype=np.int64)


def random_genes(rng: np.random.Generator, n: int, space: str | SearchSpace, bias: float = 0.0,
                 r_choices: np.ndarray | None = None) -> np.ndarray:
    """``n`` random gene rows; ``bias=0`` is OFA's uniform sampler.

    ``bias > 0`` tilts every gene towards its smaller choices (weights ``exp(-bias * index)``):
    under a tight budget almost no uniform sample is feasible, and the bounded sampler needs a
    way to reach the small corner of the space without an unbounded rejection loop.
    ``r_choices`` (resolution indices, see :func:`resolution_indices`) restricts the resolution
    gene to those, drawn the same way among them; None draws from all.
    """
    lay = layout(space)
    nc = lay.n_choices
    if bias <= 0:
        out = np.floor(rng.random((n, lay.n_genes)) * nc).astype(GENE_DTYPE)
    else:
        out = np.empty((n, lay.n_genes), dtype=GENE_DTYPE)
        for c in np.unique(nc):
            cols = np.flatnonzero(nc == c)
            w = np.exp(-bias * np.arange(c))
            out[:, cols] = rng.choice(c, size=(n, len(cols)), p=w / w.sum())
    if r_choices is not None:  # redraw the resolution among the allowed ones (same tilt)
        w = np.exp(-max(bias, 0.0) * np.arange(len(r_choices)))
        out[:, lay.r] = np.asarray(r_choices)[rng.choice(len(r_choices), size=n, p=w / w.sum())]
    return out


def canonical(genes: np.ndarray, space: str | SearchSpace) -> np.ndarray:
    """Genes of skipped slots set to index 0, so equal networks have equal rows (for dedup)."""
    lay = layout(space)
    out = genes.copy()
    skipped = ~lay.active(genes)
    out[:, lay.ks][skipped] = 0  # basic slices are views: this writes into ``out``
    out[:, lay.e][skipped] = 0
    return out
