"""What a search returns: the chosen subnet, the Pareto front, the settings that reproduce it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ofa_deploy.search_space import SubnetConfig
from ofa_deploy.search_space.genes import canonical, genes_to_config

from .evaluator import Scored


def unique(scored: Scored, space: str) -> Scored:
    """Drop repeated networks (skipped genes ignored), keeping the first occurrence."""
    _, idx = np.unique(canonical(scored.genes, space), axis=0, return_index=True)
    return scored.take(np.sort(idx))


def front_2d(scored: Scored, space: str) -> Scored:
    """Non-dominated (higher accuracy, lower latency) subnets, sorted by latency."""
    s = unique(scored, space)
    order = np.lexsort((-s.acc, s.latency))
    keep, best = [], -np.inf
    for i in order:
        if s.acc[i] > best:
            keep.append(i)
            best = s.acc[i]
    return s.take(np.array(keep, dtype=np.int64))


def top_k(scored: Scored, space: str, k: int) -> Scored:
    """The ``k`` most accurate distinct subnets."""
    s = unique(scored, space)
    return s.take(np.argsort(-s.acc, kind="stable")[:k])


@dataclass
class SearchResult:
    """The outcome of one search; ``best`` and ``front`` are :class:`Scored` batches."""

    space: str
    target: str
    latency_source: str  # "measured" | "emulated" | "estimated"
    dtype_bytes: int  # precision the intensity refers to
    objective: str
    best: Scored
    front: Scored
    candidates: Scored  # most accurate distinct feasible subnets (for --verify-top)
    settings: dict[str, Any]
    history: list[float] = field(default_factory=list)  # best predicted accuracy per generation
    evaluations: int = 0
    seconds: float = 0.0
    verified: list[dict[str, Any]] = field(default_factory=list)
    measured_on: dict[str, Any] | None = None  # the identity of the device the verified latencies were measured on
    # What an "estimated" latency is built on (e.g. "tuned-measured tables, x86-host, db 1a2b3c4d, ...")
    latency_basis: str | None = None

    def config(self, scored: Scored | None = None, i: int = 0) -> SubnetConfig:
        return genes_to_config((scored or self.best).genes[i], self.space)

    @property
    def best_config(self) -> SubnetConfig:
        return self.config()

    def row(self, scored: Scored, i: int) -> dict[str, Any]:
        """One subnet's figures, JSON-ready."""
        cfg = self.config(scored, i)
        return {
            "id": cfg.id,
            "predicted_accuracy": round(float(scored.acc[i]), 5),
            "latency_ms": round(float(scored.latency[i]), 4),
            "latency_source": self.latency_source,
            # a measured (verified) latency is its own basis; a model's estimate (or an emulator's tables) needs one
            "latency_basis": self.latency_basis if self.latency_source != "measured" else None,
            "macs": int(scored.macs[i]),
            "params": int(scored.params[i]),
            "intensity": round(float(scored.intensity[i]), 4),
            "intensity_dtype": {1: "int8", 2: "fp16", 4: "fp32"}.get(self.dtype_bytes, f"{self.dtype_bytes}B"),
            "image_size": cfg.image_size,
            "config": cfg,
        }
