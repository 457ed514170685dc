"""The end-to-end correction of a profiled latency model: from blocks timed alone to a network's latency.

A network is not the sum of its blocks timed one by one: the VM's per-call work is paid once per
network instead of once per block, and inside a network a block reads the feature map the block
before it just wrote. ``profile`` times subnets end to end (the calibration points) and fits

    predicted = a * (fixed[r] + sum_s k_s * stage_s) + b + o[r]

``stage_s`` is the table sum over stage ``s``'s active blocks and ``fixed[r]`` stem + head at the
subnet's resolution ``r``. With few points it is the affine line (``k_s = 1``, ``o = 0``: two
numbers, :func:`fit_affine`). From :data:`TERMS_MIN_POINTS` points on, a scale per stage and an
offset per resolution are fitted too, ridge-shrunk toward the line, with the strength chosen by
leave-one-out on the points themselves; "no terms" is one of the choices, taken unless the terms
predict left-out subnets at least 10 % better (:data:`TERMS_GAIN`): with 40 points that are the line
plus 3 % noise, picking the best of seven strengths alone beat the line by chance in 4 of 6 seeds,
and those terms doubled the error on unseen subnets.

Why these terms: on a steady CPU (Sapphire Rapids, BENCHMARKS.md) the error left by the line sits
inside each resolution and repeats between two timings of the same subnets (sd 2.2 %, timing noise
0.5 %): the model's own. Offline, per-stage scales and a resolution offset fitted on 61 of 62
subnets predicted the 62nd with Kendall tau 0.951 against the line's 0.930, and ridge chosen by
leave-one-out fell back to (near) the line on the noisier znver3 and znver5 rows, where nothing helped.

Everything stays a sum over blocks: :meth:`Calibration.corrected` returns tables whose plain sum
is the prediction, so search's batched lookups and its exact fastest subnet are unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from ofa_deploy.search_space import SearchSpace, get_space

log = logging.getLogger(__name__)

TERMS_MIN_POINTS = 24  # fewer calibration subnets: the affine line only (8 numbers need ~3 points each)
RIDGE_CHOICES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # penalty / the points' total weight; plus "no terms"
TERMS_GAIN = 0.9  # terms are kept only when their leave-one-out rms is at most this fraction of the line's


def fit_affine(table_sum: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """``measured ~ a * table_sum + b``, least squares on *relative* residuals.

    Weighting each point by ``1 / measured`` minimises the relative error, which is what the
    accuracy goal (share within +-10 %) counts. One point (or equal sums) gives ``b = 0``; no
    point gives the identity. ``a <= 0`` (nonsense: slower blocks, faster network) falls back
    to the ratio fit.
    """
    x, y = np.asarray(table_sum, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if len(x) == 0:
        return 1.0, 0.0
    rel = x / y
    ratio = float(rel.sum() / (rel ** 2).sum())  # y = a x minimising sum(((a x - y) / y)^2)
    if len(x) < 2 or np.ptp(x) <= 1e-9 * np.max(x):
        return ratio, 0.0
    w = 1.0 / y
    design = np.column_stack([x * w, w])
    (a, b), *_ = np.linalg.lstsq(design, y * w, rcond=None)
    if a <= 0:
        log.warning("latency calibration: affine fit has slope %.3g <= 0; using the ratio fit", a)
        return ratio, 0.0
    return float(a), float(b)


@dataclass(frozen=True)
class Calibration:
    """The correction, how well it fits its own points, and (``loo_rms_pct``) how well it predicts left-out ones."""

    a: float
    b: float
    n: int
    rms_pct: float  # root mean square of the relative residuals on the points it was fitted on, %
    max_pct: float  # largest absolute relative residual, %
    stage_scale: tuple[float, ...] | None = None  # k_s per stage; None: the affine line (all 1)
    resolution_ms: tuple[tuple[int, float], ...] = ()  # (resolution, o[r]) offsets; absent resolutions: 0
    ridge: float | None = None  # the chosen penalty (None: no terms)
    loo_rms_pct: float = math.nan  # leave-one-out rms of the chosen fit, % (nan: not computed, < 3 points)
    affine_loo_rms_pct: float = math.nan  # the same for the affine line: what the terms gained

    # -- fitting ------------------------------------------------------------------------------------
    @staticmethod
    def fit(table_sum: np.ndarray, measured: np.ndarray, stage_sums: np.ndarray | None = None,
            resolutions: np.ndarray | None = None) -> "Calibration":
        """The affine line, or with ``stage_sums`` (N, n_stages) and ``resolutions`` (N,) and at least
        :data:`TERMS_MIN_POINTS` points, the line with stage and resolution terms when leave-one-out prefers them."""
        x, y = np.asarray(table_sum, dtype=np.float64), np.asarray(measured, dtype=np.float64)
        a, b = fit_affine(x, y)
        line = Calibration(a, b, len(y), *_residuals(a * x + b, y))
        if len(y) >= 3:
            loo = _loo_affine(x, y)
            line = replace(line, affine_loo_rms_pct=loo, loo_rms_pct=loo)
        if stage_sums is None or resolutions is None or len(y) < TERMS_MIN_POINTS:
            return line
        return _fit_terms(line, x, y, np.asarray(stage_sums, dtype=np.float64), np.asarray(resolutions))

    # -- applying -----------------------------------------------------------------------------------
    def offset(self, resolution: int) -> float:
        """``o[r]`` in ms (0 for the affine line and for resolutions the points did not cover)."""
        return dict(self.resolution_ms).get(int(resolution), 0.0)

    def predict_sums(self, table_sum: np.ndarray, stage_sums: np.ndarray | None = None,
                     resolutions: np.ndarray | None = None) -> np.ndarray:
        """Predictions from table sums (and, with terms, each stage's sum and the resolution)."""
        x = np.asarray(table_sum, dtype=np.float64)
        if self.stage_scale is None:
            return self.a * x + self.b
        if stage_sums is None or resolutions is None:
            raise ValueError("a calibration with stage terms needs each subnet's stage sums and resolution")
        s = np.asarray(stage_sums, dtype=np.float64)
        k = np.asarray(self.stage_scale)
        fixed = x - s.sum(axis=1)
        offsets = np.array([self.offset(r) for r in np.asarray(resolutions)])
        return self.a * (fixed + s @ k) + self.b + offsets

    def corrected(self, table: np.ndarray, fixed: np.ndarray,
                  space: str | SearchSpace) -> tuple[np.ndarray, np.ndarray]:
        """``(table', fixed')`` whose plain lookup (:func:`.tables.lookup`) is this calibration's prediction."""
        sp = get_space(space)
        k = np.ones(sp.n_stages) if self.stage_scale is None else np.asarray(self.stage_scale)
        per_slot = np.repeat(k, sp.max_depth)[:, None, None, None]  # slot 4 * s + j belongs to stage s
        offsets = np.array([self.offset(r) for r in sp.resolution_choices])
        return self.a * per_slot * table, self.a * fixed + self.b + offsets

    def describe(self) -> str:
        """The fitted formula in one line, as ``profile`` prints it."""
        line = f"measured = {self.a:.4f} x table + {self.b:.3f} ms"
        if self.stage_scale is None:
            return line
        scales = " ".join(f"{k:.3f}" for k in self.stage_scale)
        offsets = ", ".join(f"{o:+.3f} ms @{r}" for r, o in self.resolution_ms) or "none"
        return (f"{line}, stages scaled {scales}, resolution offsets {offsets} (ridge {self.ridge:g}, chosen by "
                f"leave-one-out: rms {self.loo_rms_pct:.2f} % vs {self.affine_loo_rms_pct:.2f} % for the line)")

    # -- file ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``calibration`` fields of a model file (points, seed and design are the profile's to add)."""
        terms = None if self.stage_scale is None else {
            "stage_scale": list(self.stage_scale), "resolution_ms": {str(r): o for r, o in self.resolution_ms},
            "ridge": self.ridge, "affine_loo_rms_pct": _finite(self.affine_loo_rms_pct)}
        return {"a": self.a, "b": self.b, "n": self.n, "rms_pct": _finite(self.rms_pct),
                "max_pct": _finite(self.max_pct), "loo_rms_pct": _finite(self.loo_rms_pct), "terms": terms}

    @staticmethod
    def from_dict(c: dict[str, Any]) -> "Calibration":
        """Read a model file's ``calibration`` (files from before the terms: the affine line)."""
        terms = c.get("terms")
        nan = lambda v: math.nan if v is None else float(v)  # noqa: E731 - JSON null: undefined figure
        return Calibration(
            float(c["a"]), float(c["b"]), int(c["n"]), nan(c.get("rms_pct")), nan(c.get("max_pct")),
            stage_scale=tuple(float(k) for k in terms["stage_scale"]) if terms else None,
            resolution_ms=tuple(sorted((int(r), float(o)) for r, o in terms["resolution_ms"].items())) if terms else (),
            ridge=float(terms["ridge"]) if terms else None, loo_rms_pct=nan(c.get("loo_rms_pct")),
            affine_loo_rms_pct=nan(terms.get("affine_loo_rms_pct")) if terms else nan(c.get("loo_rms_pct")))


def _finite(x: float) -> float | None:
    """JSON has no NaN: an undefined figure is stored as null."""
    return float(x) if np.isfinite(x) else None


def _residuals(predicted: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(rms %, max %) of the relative residuals; nan for no points."""
    if len(y) == 0:
        return math.nan, math.nan
    rel = (predicted - y) / y * 100
    return float(np.sqrt(np.mean(rel ** 2))), float(np.max(np.abs(rel)))


def _loo_affine(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out rms (%) of the affine line."""
    def left_out(keep: np.ndarray, i: int) -> float:
        a, b = fit_affine(x[keep], y[keep])
        return a * x[i] + b

    return _loo_rms(y, left_out)


def _loo_rms(y: np.ndarray, left_out: Callable[[np.ndarray, int], float]) -> float:
    """Leave-one-out rms (%) of relative errors: ``left_out(keep, i)`` predicts point i from a fit on ``keep``."""
    errs = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        errs.append((left_out(keep, i) - y[i]) / y[i])
    return float(np.sqrt(np.mean(np.square(errs))) * 100)


def _features(stage_sums: np.ndarray, resolutions: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The terms' columns: each stage's sum, then an indicator per resolution after the first present one."""
    present = sorted({int(r) for r in resolutions})
    indicators = [(resolutions == r).astype(np.float64) for r in present[1:]]
    return np.column_stack([stage_sums, *indicators]), present[1:]


def _solve(x: np.ndarray, y: np.ndarray, z: np.ndarray, ridge: float) -> np.ndarray:
    """Coefficients (a, b, per standardized column) of the weighted ridge fit; the line itself is not penalized."""
    w = 1.0 / y
    design = np.column_stack([x, np.ones_like(x), z]) * w[:, None]
    penalty = np.zeros(design.shape[1])
    penalty[2:] = ridge * float(np.sum(w ** 2))  # in units of the points' own weight: the same for ms or s
    return np.linalg.solve(design.T @ design + np.diag(penalty), design.T @ (y * w))


def _fit_terms(line: Calibration, x: np.ndarray, y: np.ndarray, stage_sums: np.ndarray,
               resolutions: np.ndarray) -> Calibration:
    """The line with per-stage scales and resolution offsets, ridge chosen by leave-one-out (or the line itself)."""
    raw, extra_res = _features(stage_sums, resolutions)
    mu, sd = raw.mean(axis=0), raw.std(axis=0)
    sd = np.where(sd > 1e-12, sd, np.inf)  # a column that never varies gets no term
    z = (raw - mu) / sd
    n_st = stage_sums.shape[1]
    best, best_loo = None, line.affine_loo_rms_pct
    for ridge in RIDGE_CHOICES:
        def left_out(keep: np.ndarray, i: int) -> float:
            coef = _solve(x[keep], y[keep], z[keep], ridge)  # noqa: B023 - called within this iteration
            return coef[0] * x[i] + coef[1] + z[i] @ coef[2:]

        loo = _loo_rms(y, left_out)
        if not (loo < best_loo - 1e-9 and loo <= TERMS_GAIN * line.affine_loo_rms_pct):
            continue
        coef = _solve(x, y, z, ridge)
        slopes = coef[0] + coef[2:2 + n_st] / sd[:n_st]  # each stage's ms per table ms
        if coef[0] <= 0 or np.any(slopes <= 0):
            continue  # a stage whose bigger blocks would make the network faster: not a latency model
        best, best_loo = (ridge, coef), loo
    if best is None:
        log.info("calibration: stage/resolution terms do not predict left-out subnets %.0f %% better than the line "
                 "(leave-one-out rms %.2f %%); keeping the line", 100 * (1 - TERMS_GAIN), line.affine_loo_rms_pct)
        return line
    ridge, coef = best
    a = float(coef[0])
    raw_coef = coef[2:] / sd
    b = float(coef[1] - raw_coef @ mu)
    scales = tuple(float(1 + d / a) for d in raw_coef[:n_st])
    offsets = tuple((r, float(o)) for r, o in zip(extra_res, raw_coef[n_st:]))
    cal = Calibration(a, b, len(y), math.nan, math.nan, stage_scale=scales, resolution_ms=offsets, ridge=ridge,
                      loo_rms_pct=best_loo, affine_loo_rms_pct=line.affine_loo_rms_pct)
    rms, worst = _residuals(cal.predict_sums(x, stage_sums, resolutions), y)
    return replace(cal, rms_pct=rms, max_pct=worst)


__all__ = ["Calibration", "RIDGE_CHOICES", "TERMS_GAIN", "TERMS_MIN_POINTS", "fit_affine"]
