"""The latency-model interface search uses, and the table-based implementation of it.

Search only needs ``predict(genes) -> ms`` on a whole population and a label saying where the
numbers come from. The analytic models (roofline, VTA) and the profiled model of measured tuned
code (:mod:`.measured`) all implement the same protocol; all three are a model's output, so their
``source`` is ``estimated`` and an optional ``basis`` string says what the estimate rests on.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import numpy as np

from ofa_deploy.search_space import SearchSpace, get_space

from .tables import LayerFn, argmin_additive, layer_tables, lookup

log = logging.getLogger(__name__)

SOURCES = ("measured", "emulated", "estimated")  # measured on the device / by an emulator / by a model


@runtime_checkable
class LatencyModel(Protocol):
    """Batch-1 latency of subnets on one target."""

    source: str  # one of SOURCES
    target: str  # the target it models, as the user named it
    dtype_bytes: int  # deployed precision (4 = fp32, 1 = int8): the unit of arithmetic intensity

    def predict(self, genes: np.ndarray) -> np.ndarray:
        """(N, n_genes) gene rows -> (N,) latency in milliseconds."""
        ...

    # Optional attributes search reads with getattr (so a minimal model need not define them):
    #   basis: str        what an estimate is built on, shown next to ``source`` in search output
    #   resolutions: tuple[int, ...] | None   the only resolutions the model covers (None: all);
    #                     search samples and mutates the resolution gene inside them
    #   fastest() -> (ms, gene row)           the exact fastest subnet, if the model knows it


class TableLatencyModel:
    """A per-layer latency function, tabulated per block variant (see :mod:`.tables`).

    Exact for any model whose network latency is the sum of its layers' latencies, which holds
    for all analytic models here (layers run one after another at batch 1). Also knows its exact
    fastest subnet, which search needs to reject an impossible budget with a useful message.
    """

    resolutions: tuple[int, ...] | None = None  # analytic: every resolution of the space

    def __init__(self, space: str | SearchSpace, layer_ms: LayerFn, *, target: str, source: str = "estimated",
                 dtype_bytes: int = 4, n_classes: int | None = None, basis: str = "analytic model") -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        self.space = get_space(space)
        self.target, self.source, self.dtype_bytes, self.basis = target, source, dtype_bytes, basis
        self.layer_ms = layer_ms
        self.table, self.fixed = layer_tables(self.space, n_classes).additive(layer_ms)

    def predict(self, genes: np.ndarray) -> np.ndarray:
        return lookup(genes, self.table, self.fixed, self.space)

    def fastest(self) -> tuple[float, np.ndarray]:
        """(latency ms, gene row) of the fastest subnet in the whole space (exact)."""
        return argmin_additive(self.table, self.fixed, self.space)
