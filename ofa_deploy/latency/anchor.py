"""Adopted tables anchored by a few blocks timed on this device (``profile --adapt --time-blocks K``).

``profile --adapt`` takes another device's per-block tables, re-scales each block by its tasks'
best times in the two databases (:mod:`.rescale`) and fits ``a * table + b`` on a few subnets
timed here. On a CPU nobody has task times of (a znver3 borrowing znver5's AVX2 schedules) that
left 60 % of unseen subnets within +-10 %, Kendall tau 0.57: the blocks' relative times on this
microarchitecture are what neither the task times (measured elsewhere) nor a scale and an offset
know. Timing every block here is the full profile (~90 builds per resolution); timing the few
that carry most of a subnet's time costs minutes and fixes most of the sum.

So: rank the workloads by their *share* (table entry x how often a uniformly random subnet runs
them, :func:`block_shares`), time the top K here, and move every untimed block by the median
ratio (timed here / adopted) of the timed blocks of its stage (the same feature-map size and
channels: the kernels most alike), or of all timed blocks where its stage has fewer than
:data:`MIN_GROUP` (:func:`anchor_tables`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ofa_deploy.search_space import SearchSpace, get_space

MIN_GROUP = 2  # timed blocks a stage needs before its own median ratio is used (else all timed blocks')


def block_shares(space: str | SearchSpace, resolutions: tuple[int, ...] | list[int],
                 workload_ms: dict[str, float]) -> dict[str, float]:
    """Each workload's expected milliseconds in a subnet drawn uniformly from the space (at ``resolutions``).

    A stage's depth is uniform over the depth choices, so its j-th block runs with probability
    ``P(d > j)``; kernel and expansion are uniform, so each (k, e) variant of a running slot with
    ``1 / (n_k * n_e)``. The stem and the head run in every subnet. A workload that several slots
    compile to (a stage's non-first blocks) adds up their probabilities.
    """
    from ofa_deploy.workloads import slot_key

    sp = get_space(space)
    variants = len(sp.kernel_choices) * len(sp.expand_choices)
    runs: dict[str, float] = {}
    for r in resolutions:
        for part in ("stem", "head"):
            runs[f"r{r}/{part}"] = 1.0 / len(resolutions)
        for slot in range(sp.n_blocks):
            depth = slot % sp.max_depth  # 0: the stage's first block
            p_slot = sum(d > depth for d in sp.depth_choices) / len(sp.depth_choices)
            for k in sp.kernel_choices:
                for e in sp.expand_choices:
                    key = slot_key(sp, slot, k, e, r)
                    runs[key] = runs.get(key, 0.0) + p_slot / variants / len(resolutions)
    return {key: p * workload_ms[key] for key, p in runs.items() if key in workload_ms}


def choose_blocks(shares: dict[str, float], k: int) -> list[str]:
    """The ``k`` workloads with the largest share, largest first (ties by key: the same list every run)."""
    return sorted(shares, key=lambda key: (-shares[key], key))[:max(k, 0)]


def stage_of(key: str) -> str:
    """The group a workload's ratio is pooled in: resolution and stage (``r224/s3``), or ``r224/stem``/``head``."""
    parts = key.split("/")
    return f"{parts[0]}/{parts[1].split('-')[0]}"


@dataclass(frozen=True)
class Anchoring:
    """What :func:`anchor_tables` did: the timed blocks' ratios and the factor each group's untimed blocks got."""

    timed: dict[str, float]  # workload key -> timed here / adopted
    group_ratio: dict[str, float]  # stage -> factor its untimed blocks got
    median: float  # all timed blocks' median ratio: a stage with < MIN_GROUP timed blocks gets it

    def summary(self) -> dict[str, Any]:
        ratios = np.array(list(self.timed.values())) if self.timed else np.array([1.0])
        return {"timed_blocks": len(self.timed), "median_ratio": round(self.median, 4),
                "ratio_min": round(float(ratios.min()), 4), "ratio_max": round(float(ratios.max()), 4),
                "stages_own_ratio": sum(1 for g in self.group_ratio if self._own(g))}

    def _own(self, group: str) -> bool:
        return sum(stage_of(k) == group for k in self.timed) >= MIN_GROUP


def anchor_tables(adopted_ms: dict[str, float], timed_ms: dict[str, float]) -> tuple[dict[str, float], Anchoring]:
    """Per-workload milliseconds: the timed blocks as timed, every other block moved by its stage's ratio.

    ``adopted_ms``: the adopted (re-scaled) tables, every workload; ``timed_ms``: the ones timed here.
    A stage with at least :data:`MIN_GROUP` timed blocks moves its untimed ones by their median
    ``timed / adopted``; the others by the median over all timed blocks (1 when none is timed).
    """
    ratios = {key: timed_ms[key] / adopted_ms[key] for key in timed_ms if adopted_ms.get(key, 0) > 0}
    median = float(np.median(list(ratios.values()))) if ratios else 1.0
    by_group: dict[str, list[float]] = {}
    for key, ratio in ratios.items():
        by_group.setdefault(stage_of(key), []).append(ratio)
    group_ratio = {}
    out = {}
    for key, ms in adopted_ms.items():
        if key in timed_ms:
            out[key] = timed_ms[key]
            continue
        group = stage_of(key)
        pooled = by_group.get(group, [])
        group_ratio[group] = float(np.median(pooled)) if len(pooled) >= MIN_GROUP else median
        out[key] = ms * group_ratio[group]
    return out, Anchoring(ratios, group_ratio, median)
