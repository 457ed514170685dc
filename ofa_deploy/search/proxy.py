"""A synthetic accuracy model for benchmarks and tests, where no trained predictor exists.

``accuracy = 0.80 - 0.04 * ln(595 M / MACs)``: 80.0 % at 595 M MACs (OFA's flops@595M subnet) and
about 4 points of top-1 per e-fold of MACs, roughly the slope of OFA's accuracy-vs-MACs curve.
It only says "bigger is better, with diminishing returns"; numbers found with it are about the
cost models, never about real accuracy, and are labelled as such wherever they are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ofa_deploy.latency.tables import cost_tables
from ofa_deploy.search_space import DEFAULT_SPACE


@dataclass(frozen=True)
class ProxyAccuracy:
    """Implements the accuracy-model protocol (``space``, ``predict(genes)``)."""

    space: str = DEFAULT_SPACE
    anchor_macs: float = 595e6  # OFA flops@595M_top1@80.0
    anchor_acc: float = 0.80
    slope: float = 0.04  # accuracy per e-fold of MACs

    def predict(self, genes: np.ndarray) -> np.ndarray:
        macs = cost_tables(self.space).evaluate(genes)["macs"]
        return self.anchor_acc - self.slope * np.log(self.anchor_macs / macs)
