"""Table-based costs: MACs, parameters, bytes moved, and any per-layer additive metric, per gene row.

Search evaluates ~50,000 subnets; calling :func:`count_costs` for each would take minutes. But a
block's layers depend only on (block slot, kernel, expand, resolution): its input shape is fixed
by the resolution and the (fixed) strides and widths of the stages before it. So we cost every
block variant once, *with count_costs itself* (on uniform depth-4 configs, one per kernel, expand
and resolution), and a subnet's total is the fixed part (stem, head) at its resolution plus a
masked sum over its active slots. The same decomposition turns any per-layer latency model into a
lookup table (:class:`.base.TableLatencyModel`); search's MAC and parameter budgets use the cost
tables. ``tests/test_search_tables.py`` checks the fast path equals ``count_costs`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from ofa_deploy.search_space import SearchSpace, SubnetConfig, get_space
from ofa_deploy.search_space.costs import LayerCost, count_costs
from ofa_deploy.search_space.genes import layout

LayerFn = Callable[[LayerCost, "str | None"], float]  # (layer, fused activation) -> metric


def layers_with_acts(cfg: SubnetConfig, n_classes: int | None = None) -> list[tuple[LayerCost, str | None]]:
    """``count_costs(cfg).layers`` paired with the activation fused after each layer.

    Cost models of accelerators need it (VTA cannot compute h-swish); count_costs does not carry
    it because MACs and bytes do not depend on it.
    """
    sp = cfg.search_space
    stage_of = [b.stage for b in cfg.blocks()]
    out: list[tuple[LayerCost, str | None]] = []
    for layer in count_costs(cfg, n_classes).layers:
        out.append((layer, _act(layer.name, sp, stage_of)))
    return out


def _act(name: str, sp: SearchSpace, stage_of: list[int]) -> str | None:
    if name in ("first_conv", "final_expand_layer", "feature_mix_layer"):
        return sp.stem_head_act
    if not name.startswith("blocks.") or name.endswith((".project", ".se")):
        return None  # pool, classifier, linear projections; SE carries its own gates
    block = int(name.split(".")[1])
    return "relu" if block == 0 else sp.stages[stage_of[block - 1]].act


@dataclass(frozen=True)
class LayerTables:
    """Every block variant's layers, and the fixed layers per resolution, for one space and head."""

    space: SearchSpace
    n_classes: int
    # block[slot][k][e][r] -> layers of that block variant; fixed[r] -> stem + first block + head
    block: tuple = field(repr=False)
    fixed: tuple = field(repr=False)

    def additive(self, fn: LayerFn, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
        """Tabulate a per-layer metric: (block table (slot, k, e, r), fixed table (r,))."""
        sp = self.space
        shape = (sp.n_blocks, len(sp.kernel_choices), len(sp.expand_choices), len(sp.resolution_choices))
        cache: dict[tuple, float] = {}

        def total(layers: tuple) -> float:
            s = 0
            for layer, act in layers:
                key = (layer.op, layer.in_shape, layer.out_shape, layer.macs, layer.weight_elems,
                       layer.act_read, layer.act_write, act)
                if key not in cache:
                    cache[key] = fn(layer, act)
                s += cache[key]
            return s

        table = np.empty(shape, dtype=dtype)
        for idx in np.ndindex(*shape):
            s, k, e, r = idx
            table[idx] = total(self.block[s][k][e][r])
        fixed = np.array([total(layers) for layers in self.fixed], dtype=dtype)
        return table, fixed


@lru_cache(maxsize=8)
def layer_tables(space: str | SearchSpace, n_classes: int | None = None) -> LayerTables:
    """Build (and cache) the layer tables from count_costs on uniform depth-4 configs."""
    sp = get_space(space)
    n_classes = n_classes or sp.n_classes
    nk, ne, nr = len(sp.kernel_choices), len(sp.expand_choices), len(sp.resolution_choices)
    block = [[[[None] * nr for _ in range(ne)] for _ in range(nk)] for _ in range(sp.n_blocks)]
    fixed: list = [None] * nr
    for ki, k in enumerate(sp.kernel_choices):
        for ei, e in enumerate(sp.expand_choices):
            for ri, r in enumerate(sp.resolution_choices):
                cfg = SubnetConfig.uniform(k, e, sp.max_depth, r, sp.name)
                per_block: dict[int, list] = {}
                rest = []
                for layer, act in layers_with_acts(cfg, n_classes):
                    parts = layer.name.split(".")
                    if parts[0] == "blocks" and int(parts[1]) > 0:
                        per_block.setdefault(int(parts[1]) - 1, []).append((layer, act))
                    else:
                        rest.append((layer, act))
                for slot in range(sp.n_blocks):
                    block[slot][ki][ei][ri] = tuple(per_block[slot])
                if fixed[ri] is None:
                    fixed[ri] = tuple(rest)
    freeze = lambda x: tuple(freeze(v) for v in x) if isinstance(x, list) else x  # noqa: E731
    return LayerTables(sp, n_classes, freeze(block), tuple(fixed))


def lookup(genes: np.ndarray, table: np.ndarray, fixed: np.ndarray, space: str | SearchSpace) -> np.ndarray:
    """Per-row total of an additive table: fixed[r] + sum over active slots of table[slot, k, e, r]."""
    lay = layout(space)
    g = np.asarray(genes, dtype=np.int64)
    nb, nk, ne, nr = table.shape
    r = g[:, lay.r]
    flat = ((np.arange(nb)[None, :] * nk + g[:, lay.ks]) * ne + g[:, lay.e]) * nr + r[:, None]
    vals = table.reshape(-1)[flat]
    vals = np.where(lay.active(g), vals, 0)
    return fixed[r] + vals.sum(axis=1)


def stage_sums(genes: np.ndarray, table: np.ndarray, space: str | SearchSpace) -> np.ndarray:
    """(N, n_stages): each row's sum of ``table`` over the active slots of each stage (no fixed part).

    :func:`lookup` is ``fixed[r]`` plus these summed over the stages; a latency model with a term per
    stage (``measured.Calibration``) is fitted on them.
    """
    sp = get_space(space)
    lay = layout(sp)
    g = np.asarray(genes, dtype=np.int64)
    nb, nk, ne, nr = table.shape
    flat = ((np.arange(nb)[None, :] * nk + g[:, lay.ks]) * ne + g[:, lay.e]) * nr + g[:, lay.r][:, None]
    vals = np.where(lay.active(g), table.reshape(-1)[flat], 0)
    return vals.reshape(len(g), sp.n_stages, sp.max_depth).sum(axis=2)


def argmin_additive(table: np.ndarray, fixed: np.ndarray, space: str | SearchSpace) -> tuple[float, np.ndarray]:
    """Exact minimum of an additive metric over the whole space, and a gene row reaching it.

    Per resolution, each stage independently picks the depth minimising the sum of its active
    slots' cheapest variants; this is exact because the metric is a sum of per-slot terms.
    """
    sp = get_space(space)
    lay = layout(sp)
    nb, nk, ne, nr = table.shape
    best_val, best_row = np.inf, None
    flat = table.reshape(nb, nk * ne, nr)
    cheapest = flat.min(axis=1)  # (slot, r)
    which = flat.argmin(axis=1)
    for r in range(nr):
        row = np.zeros(lay.n_genes, dtype=np.int64)
        total = float(fixed[r])
        for s in range(sp.n_stages):
            slots = cheapest[s * sp.max_depth:(s + 1) * sp.max_depth, r]
            cums = {d: float(slots[:d].sum()) for d in sp.depth_choices}
            d = min(cums, key=lambda x: (cums[x], x))
            total += cums[d]
            row[lay.d.start + s] = sp.depth_choices.index(d)
            for j in range(sp.max_depth):
                ke = which[s * sp.max_depth + j, r]
                row[lay.ks.start + s * sp.max_depth + j] = ke // ne
                row[lay.e.start + s * sp.max_depth + j] = ke % ne
        row[lay.r] = r
        if total < best_val:
            best_val, best_row = total, row
    return best_val, best_row.astype(np.int8)


@dataclass(frozen=True)
class CostTables:
    """Integer MACs / params / moved elements per block variant: exact, vectorised count_costs."""

    space: SearchSpace
    n_classes: int
    macs: tuple[np.ndarray, np.ndarray]
    params: tuple[np.ndarray, np.ndarray]
    elems: tuple[np.ndarray, np.ndarray]  # weights + activations read + written (bytes = elems * dtype)

    def evaluate(self, genes: np.ndarray, dtype_bytes: int = 4) -> dict[str, np.ndarray]:
        """MACs, params, bytes moved and intensity (ops/byte) per row, as count_costs defines them."""
        macs = lookup(genes, *self.macs, self.space)
        params = lookup(genes, *self.params, self.space)
        nbytes = lookup(genes, *self.elems, self.space) * dtype_bytes
        return {"macs": macs, "params": params, "bytes": nbytes, "intensity": 2 * macs / nbytes}


@lru_cache(maxsize=8)
def cost_tables(space: str | SearchSpace, n_classes: int | None = None) -> CostTables:
    lt = layer_tables(space, n_classes)
    return CostTables(
        lt.space, lt.n_classes,
        macs=lt.additive(lambda layer, _: layer.macs, np.int64),
        params=lt.additive(lambda layer, _: layer.params, np.int64),
        elems=lt.additive(lambda layer, _: layer.bytes(1), np.int64),
    )
