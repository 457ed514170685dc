"""Another device's block tables re-scaled to the code this device runs, from the databases' task times.

``profile --adapt`` starts from another device's per-block tables and fits ``a * table + b`` on a
few subnets timed here. That fixes the overall speed, not the ranking: when this device runs other
code (its own database, or the one it borrows: 256-bit schedules on a CPU without AVX-512 where the
tables timed AVX-512 code), blocks slow down unevenly, and no scale and offset re-orders them
(Kendall tau 0.57 on znver5 with AVX-512 off, flat in the number of calibration subnets).

Both databases know each task's fastest measured time (``tune`` keeps it in tune_state.json). A
block's table entry times the ratio of its tasks' summed best times, this device's code over the
tables' code, is the block's time on this device's code as far as the tasks tell. Nothing is timed
here: the ratios come from tuning. A block whose tasks are mostly unknown to either database
(rule-scheduled, or borrowed from a structural sibling) gets the median ratio of the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_COVER = 0.5  # a block's ratio counts when its known tasks hold at least half of its tasks' source time


@dataclass(frozen=True)
class BlockRatios:
    """Per workload: this code's time over the tables' code's, and how much of the block the tasks cover."""

    ratio: dict[str, float]  # workload key -> factor applied to its table entry
    cover: dict[str, float]  # workload key -> share of its source task time with both times known
    median: float  # median of the covered blocks' ratios: what the uncovered ones get
    uncovered: tuple[str, ...]  # workloads that got the median

    def summary(self) -> dict[str, Any]:
        ratios = np.array(list(self.ratio.values()))
        return {"median_ratio": round(self.median, 4), "blocks": len(self.ratio),
                "blocks_with_median": len(self.uncovered), "ratio_p10": round(float(np.percentile(ratios, 10)), 4),
                "ratio_p90": round(float(np.percentile(ratios, 90)), 4)}


def block_ratios(tasks: dict[str, dict[str, int]], source: dict[str, float], here: dict[str, float]) -> BlockRatios:
    """Each workload's ``sum(w * here) / sum(w * source)`` over its tasks with both times known.

    ``tasks``: workload key -> {task hash: weight} (``compile.tune.workload_tasks``); ``source``:
    task hash -> best seconds of the code the tables timed; ``here``: the same for this device's code.
    """
    ratio: dict[str, float] = {}
    cover: dict[str, float] = {}
    for key, weights in tasks.items():
        known_src = sum(w * source[h] for h, w in weights.items() if h in source)
        both = [(w, source[h], here[h]) for h, w in weights.items() if h in source and h in here]
        src, dst = sum(w * s for w, s, _ in both), sum(w * d for w, _, d in both)
        cover[key] = src / known_src if known_src > 0 else 0.0
        if cover[key] >= MIN_COVER and src > 0:
            ratio[key] = dst / src
    median = float(np.median(list(ratio.values()))) if ratio else 1.0
    uncovered = tuple(sorted(k for k in tasks if k not in ratio))
    for key in uncovered:
        ratio[key] = median
    return BlockRatios(ratio, cover, median, uncovered)


def rescale_workloads(workloads: dict[str, dict[str, Any]], ratios: BlockRatios) -> dict[str, dict[str, Any]]:
    """Workload records with ``median_ms`` multiplied by the block's ratio (the adopted figure kept as ``source_ms``).

    A workload without a ratio (not in the task map) gets the median ratio.
    """
    out = {}
    for key, record in workloads.items():
        r = ratios.ratio.get(key, ratios.median)
        out[key] = {**record, "source_ms": record["median_ms"], "ratio": round(r, 6),
                    "median_ms": record["median_ms"] * r}
    return out
