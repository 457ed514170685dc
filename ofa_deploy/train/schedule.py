"""Progressive shrinking as data: a list of phases, each with its epochs, learning rate and the
elastic choices that are active in it.

The paper's order: train the full network; then elastic kernel; then elastic depth (two phases:
{3,4}, then {2,3,4}); then elastic expand ratio (two phases: {4,6}, then {3,4,6}), with the hidden
channels importance-sorted before it. The largest network, frozen after the first phase, is the
knowledge-distillation teacher of every later phase. Presets scale the epochs: ``paper`` is the
published schedule, ``short`` a tenth of it, ``tiny`` one that finishes on a laptop CPU (42 epochs,
24 of them on the full network).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ofa_deploy.errors import ConfigError


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    lr: float  # peak learning rate for a total batch of 256 (scaled linearly to the real batch), cosine decay
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    depths: tuple[int, ...]
    subnets_per_step: int = 1  # sampled subnets whose gradients are summed per optimizer step
    distill: bool = True  # the frozen largest network is the teacher
    sort_channels: bool = False  # importance-sort hidden channels before this phase


# Epochs, learning-rate ratios and subnets per step follow the official once-for-all training
# scripts (kernel 120 ep; depth 25 + 120 ep; expand 25 + 120 ep; 1, 2 and 4 subnets per step).
PAPER: tuple[Phase, ...] = (
    Phase("full", 180, 0.10, (7,), (6,), (4,), distill=False),
    Phase("kernel", 120, 0.12, (3, 5, 7), (6,), (4,)),
    Phase("depth-1", 25, 0.01, (3, 5, 7), (6,), (3, 4), subnets_per_step=2),
    Phase("depth-2", 120, 0.03, (3, 5, 7), (6,), (2, 3, 4), subnets_per_step=2),
    Phase("expand-1", 25, 0.01, (3, 5, 7), (4, 6), (2, 3, 4), subnets_per_step=4, sort_channels=True),
    Phase("expand-2", 120, 0.03, (3, 5, 7), (3, 4, 6), (2, 3, 4), subnets_per_step=4),
)
# tiny: most of a CPU budget goes to the full network (the teacher of every later phase), and the
# kernel phase peaks at 0.03 instead of 0.12: a 2-epoch phase cannot recover from the paper's
# restart (measured on the demo set: the largest subnet fell from 53 % to 28 % top-1 in one epoch).
# 24 full epochs, not 14: demo-set accuracy sits at 30-50 % for 6-8 epochs and then jumps to ~90 %;
# a 14-epoch cosine schedule decays its learning rate before the largest network gets there.
# 18 elastic epochs, most of them in expand-2: it is the only phase that trains every subnet (the
# smallest one included); the earlier phases open one dimension at a time. With 7 elastic epochs
# (2/1/1/1/2) the smallest subnet ended at 52 % and was still gaining 10 points an epoch.
TINY_EPOCHS = {"full": 24, "kernel": 3, "depth-1": 1, "depth-2": 3, "expand-1": 1, "expand-2": 10}
TINY_LR = {"kernel": 0.03}

PRESETS = ("paper", "short", "tiny")


def get_schedule(preset: str = "paper") -> tuple[Phase, ...]:
    """The phases of ``preset``: paper (published), short (epochs / 10), tiny (CPU demo)."""
    if preset == "paper":
        return PAPER
    if preset == "short":
        return tuple(replace(p, epochs=max(1, math.ceil(p.epochs / 10))) for p in PAPER)
    if preset == "tiny":
        return tuple(replace(p, epochs=TINY_EPOCHS[p.name], lr=TINY_LR.get(p.name, p.lr)) for p in PAPER)
    raise ConfigError(f"schedule: unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
