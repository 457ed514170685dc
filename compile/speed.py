"""Timing in the machine's steady state: the speed probe's rules and its remembered floor. Never imports TVM.

A shared VM runs part of the time in a slow state (another tenant on our cores): subnets then
time 1.3-1.6x slow, by a factor that differs from model to model, so no correction can undo it.
Every local CPU timing of ``profile`` (tables, calibration) and of the accuracy bench therefore
reads a speed probe (worker/speed_probe.py) before each sample: samples taken while the probe
read more than :data:`CONTENDED_RATIO` x its steady reading (the *floor*) are dropped, a model
whose every pass was contended is timed again later, and the worker pauses (bounded) while the
machine is slow. The result is the machine's own speed, which is what a latency model predicts;
a latency that was nevertheless timed contended says so (``LatencyMeasurement.probe_us``).

The floor is the lowest probe reading ever seen for this CPU and thread count, remembered in the
cache (:func:`recorded_floor`), so the first models of a run are judged like the last.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ofa_deploy.atomic import write_text
from ofa_deploy.cache import cache_root

log = logging.getLogger(__name__)

# Steady readings were 1.4-1.6 us per launch and contended ones 2.5-2.9 us on the development VM:
# a reading above 1.3 x the floor is contended, with margin on both sides.
CONTENDED_RATIO = 1.3
FLOOR_FILE = "speed_probe_floor.json"
MIN_STEADY_SHARE = 1 / 3  # a pass counts as steady with at least this share of its samples steady


def is_contended(reading_us: float, floor_us: float | None) -> bool:
    """Whether a probe reading says the machine was slowed (no floor known: never)."""
    return floor_us is not None and reading_us > CONTENDED_RATIO * floor_us


def steady_passes_mask(readings: Sequence[float | None]) -> list[bool]:
    """Which of one model's timing passes count as steady: judged against the calmest reading among them.

    A pass without a reading (a board, a GPU) always counts. The one rule of ``compile.profile.fastest_pass``
    and ``latency.speed_state.steady_passes``.
    """
    known = [p for p in readings if p is not None]
    calm = min(known) if known else None
    return [p is None or not is_contended(p, calm) for p in readings]


def steady_samples(samples_ms: Sequence[float], probe_us: Sequence[float],
                   floor_us: float | None) -> tuple[list[float], list[float]]:
    """The samples (and their probe readings) timed in the steady state, if enough were; else all of them.

    Enough: :data:`MIN_STEADY_SHARE` of the samples, at least one.
    """
    keep = [(s, p) for s, p in zip(samples_ms, probe_us) if not is_contended(p, floor_us)]
    if len(keep) < max(1, MIN_STEADY_SHARE * len(samples_ms)):
        return list(samples_ms), list(probe_us)
    return [s for s, _ in keep], [p for _, p in keep]


def median_probe(probe_us: Sequence[float]) -> float | None:
    return float(statistics.median(probe_us)) if probe_us else None


def _floor_key(device_folder: str, threads: int) -> str:
    return f"{device_folder}/{threads}t"


def _floors() -> dict[str, Any]:
    """The remembered floors (an unreadable or damaged file: none)."""
    try:
        table = json.loads((cache_root() / FLOOR_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def recorded_floor(device_folder: str, threads: int) -> float | None:
    """The lowest probe reading remembered for this CPU (its tuning_logs folder name) and thread count."""
    value = _floors().get(_floor_key(device_folder, threads))
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def record_floor(device_folder: str, threads: int, floor_us: float) -> None:
    """Remember ``floor_us`` if it is lower than the floor on record (atomic write)."""
    table, key = _floors(), _floor_key(device_folder, threads)
    old = table.get(key)
    if isinstance(old, (int, float)) and 0 < old <= floor_us:
        return
    path = cache_root() / FLOOR_FILE
    table[key] = float(floor_us)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
    log.info("speed probe floor for %s, %d threads: %.3f us per launch", device_folder, threads, floor_us)


class SteadyState:
    """The probe floor while timing on this machine: the remembered one, lowered (and remembered) by every
    reading a worker reports."""

    def __init__(self, folder: str, threads: int, floor_us: float | None) -> None:
        self.folder, self.threads, self.floor_us = folder, threads, floor_us

    @classmethod
    def for_host(cls, num_threads: int | None = None) -> "SteadyState":
        """This CPU (its tuning_logs folder name) with ``num_threads`` (None: ``isolate.tvm_threads()``)."""
        from ofa_deploy.tuning_logs.identity import host_identity

        from .isolate import tvm_threads

        folder, threads = host_identity().folder_name(), tvm_threads(num_threads)
        return cls(folder, threads, recorded_floor(folder, threads))

    def request(self, wait_s: float) -> dict[str, Any]:
        """What a timing worker needs: read the probe, wait up to ``wait_s`` for the steady state."""
        return {"speed_probe": True, "probe_floor_us": self.floor_us, "steady_wait_s": wait_s}

    def saw(self, reply: dict[str, Any]) -> None:
        """Lower the floor to the lowest reading of a worker's reply, if lower."""
        lowest = reply.get("probe_lowest_us")
        if lowest and (self.floor_us is None or lowest < self.floor_us):
            self.floor_us = float(lowest)
            record_floor(self.folder, self.threads, self.floor_us)

    def contended(self, probe_us: float | None) -> bool:
        """Whether a measurement's reading says it was timed slowed (unprobed: no)."""
        return probe_us is not None and is_contended(probe_us, self.floor_us)

    def all_contended(self, probe_us: Sequence[float | None]) -> bool:
        """Whether every one of a model's passes (their readings) was timed slowed."""
        return all(self.contended(p) for p in probe_us)


@dataclass(frozen=True)
class TurnTiming:
    """Models timed in turns in one process (worker op ``time_interleaved``), the machine's drift taken out.

    ``latency_ms[i]``: model i at the session's median speed; ``spread[i]``: how its turns scatter
    about that once each turn's speed is divided out (sd of the log); ``turn_speed[t]``: turn t's
    time relative to the median turn (1.3: everything ran 1.3x slow then).
    """

    latency_ms: list[float]
    spread: list[float]
    turn_speed: list[float]


def in_turns(samples_ms: Sequence[Sequence[float]], block: int, rounds: int = 3) -> TurnTiming:
    """Each model's latency from samples taken in turns (``block`` per model and turn), drift divided out.

    Why: on a shared VM the machine's speed moves by 10-30 % within seconds (BENCHMARKS.md, "Timing in
    turns"); models timed one after another each catch a different speed, while models timed in the
    same turn share it. A turn's speed is the median, over models, of each model's block median
    relative to that model's latency; a model's latency is the median over turns of its block
    medians divided by their turn's speed; ``rounds`` alternations of the two settle it. With one
    model this is its median block. The median turn has speed 1, so the latencies stay in ms at
    the session's typical speed.
    """
    if block < 1 or not samples_ms or any(len(s) != len(samples_ms[0]) or len(s) < block for s in samples_ms):
        raise ValueError(f"in_turns needs one equally long list of samples per model, at least block={block} each")
    turns = len(samples_ms[0]) // block
    blocks = np.array([[statistics.median(s[t * block:(t + 1) * block]) for t in range(turns)] for s in samples_ms])
    latency = np.median(blocks, axis=1)
    speed = np.ones(turns)
    for _ in range(rounds):
        speed = np.median(blocks / latency[:, None], axis=0)
        speed /= np.median(speed)
        latency = np.median(blocks / speed[None, :], axis=1)
    residual = np.log(blocks / speed[None, :] / latency[:, None])
    return TurnTiming([float(v) for v in latency], [float(v) for v in residual.std(axis=1)],
                      [float(v) for v in speed])
