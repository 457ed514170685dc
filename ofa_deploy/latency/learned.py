"""Roofline efficiencies learned from a measured target, for targets with no device to time on.

The analytic roofline (:mod:`.roofline`) needs, per kind of fused layer, the fraction of the
datasheet peak that compiled code reaches. Rather than guess them, we fit them to the measured
per-workload tables of a target we *can* time (``tuning_logs/<source>/latency_model.json``, from
``ofa-deploy profile``: stem, 90 block variants and head per resolution), using that target's own
registry peaks. Every workload's time is modelled as the sum over its fused layers of

    max(ops / (peak_gflops * eff[kind]), bytes / (peak_gbps * eff_mem)) + overhead

which is linear in the unknowns ``1/eff[kind]``, ``1/eff_mem`` and ``overhead`` once each layer
is known to be compute- or memory-bound. So the fit alternates: classify every layer with the
current efficiencies, solve a bounded non-negative least-squares problem on relative residuals
(:func:`nnls`, Lawson-Hanson; no scipy needed), repeat until the classification is stable, and
keep the iterate with the lowest error of the *true* (max) model, best of three starting
classifications (alternating only finds a local optimum of the piecewise-linear model).

Caveats, recorded in every file this writes:

* Efficiencies are fractions of peak, and a fraction of peak learned on one ISA (x86 AVX-512)
  is assumed to hold on another (NEON). That is the whole model; the published-figure check
  (``bench/arm_estimate_check.py``, BENCHMARKS.md) says how wrong it is.
* Parameters that explain almost none of the measured time (the compute efficiency of global
  pooling and the classifier, which are memory-bound) cannot be learned from it: weak prior rows
  pull them towards the named guesses, and the file lists them as weakly determined (their
  values are not evidence).
* The source's end-to-end correction (``a * sum + b``) is not transferred: its ``b`` is a
  per-network runtime cost of the source machine. The x86 end-to-end error of the learned
  roofline is reported instead (``e2e_check``).
* The memory bound uses the registry's bandwidth. On the x86 host that is a measured copy
  bandwidth while batch-1 activations mostly live in caches, so ``eff_mem`` may exceed 1 (it is
  capped at ``FitConfig.max_mem_eff``).

Targets whose kind differs from the source's (a GPU from a CPU) are refused: nothing learned on
one carries to the other.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ofa_deploy.atomic import write_json
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.search_space import SearchSpace, SubnetConfig, get_space
from ofa_deploy.search_space.costs import LayerCost, count_costs
from ofa_deploy.tuning_logs.folders import target_dir
from ofa_deploy.tuning_logs.layout import ESTIMATE_FILE, MODEL_FILE

from .base import TableLatencyModel
from .roofline import Hardware, RooflineEfficiency, efficiency_for, layer_ops, roofline_layer_ms

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FITTED_KINDS = ("conv", "dwconv", "se", "pool", "linear")  # the op kinds of count_costs layers
PARAMS = FITTED_KINDS + ("mem", "overhead_us")
_MEM, _OH = len(FITTED_KINDS), len(FITTED_KINDS) + 1
_warned: set[tuple[str, str]] = set()  # (path, reason) already warned about


@dataclass(frozen=True)
class FitConfig:
    """How efficiencies are fitted; defaults are what ``profile --estimate-from`` uses."""

    prior: RooflineEfficiency | None = None  # pulled towards where data is scarce; None: named guesses of the kind
    prior_weight: float = 0.02  # weight of each prior row, relative to one workload's relative residual
    max_compute_eff: float = 1.0  # compiled code cannot beat the registry's (upper-bound) peak
    max_mem_eff: float = 4.0  # batch-1 activations sit in caches: "bandwidth" may beat the DRAM figure
    max_iter: int = 30  # classify/solve rounds; it usually settles in < 10
    min_share_pct: float = 1.0  # a parameter explaining less of the fitted time is "weakly determined"


# --------------------------------------------------------------------------------------------- NNLS
def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """``argmin ||a x - b||`` subject to ``x >= 0`` (Lawson & Hanson 1974, active set).

    Exact for the handful of unknowns here; columns are rescaled to unit norm first so that
    unknowns of very different magnitudes (seconds vs. dimensionless) are treated alike.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    m, n = a.shape
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    a = a / norms
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * max(m, n) * max(1.0, np.abs(a).sum(axis=0).max())
    for _ in range(max_iter or 3 * n + 10):
        w = a.T @ (b - a @ x)
        if passive.all() or w[~passive].max() <= tol:
            break
        passive[np.argmax(np.where(passive, -np.inf, w))] = True
        for _ in range(n + 1):  # each pass drops at least one index from the passive set
            s = np.zeros(n)
            s[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if not passive.any() or s[passive].min() > 0:
                break
            bad = passive & (s <= 0)
            alpha = np.min(x[bad] / (x[bad] - s[bad]))
            x = x + alpha * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
        x = s
    return x / norms


# ------------------------------------------------------------------------------------- layers
def workload_layers(space: str | SearchSpace, resolutions: list[int] | tuple[int, ...],
                    n_classes: int | None = None) -> dict[str, list[LayerCost]]:
    """The fused layers of every workload key (see :mod:`ofa_deploy.workloads`) at ``resolutions``.

    Built from :func:`count_costs` on uniform depth-4 configs: one per (kernel, expand), whose
    slot ``4 s`` is stage ``s``'s first block and slot ``4 s + 1`` a later one.
    """
    from ofa_deploy.workloads import block_key

    sp = get_space(space)
    out: dict[str, list[LayerCost]] = {}
    for r in resolutions:
        for k in sp.kernel_choices:
            for e in sp.expand_choices:
                per_block: dict[int, list[LayerCost]] = {}
                stem: list[LayerCost] = []
                head: list[LayerCost] = []
                for layer in count_costs(SubnetConfig.uniform(k, e, sp.max_depth, r, sp.name), n_classes).layers:
                    parts = layer.name.split(".")
                    if parts[0] == "blocks" and int(parts[1]) > 0:
                        per_block.setdefault(int(parts[1]) - 1, []).append(layer)
                    elif layer.name == "first_conv" or parts[0] == "blocks":
                        stem.append(layer)
                    else:
                        head.append(layer)
                out[f"r{r}/stem"], out[f"r{r}/head"] = stem, head
                for stage in range(sp.n_stages):
                    for first in (True, False):
                        out[block_key(r, stage, first, k, e)] = per_block[stage * sp.max_depth + (0 if first else 1)]
    return out


@dataclass(frozen=True)
class LayerTerms:
    """Every layer of every fitted workload as the fit sees it: seconds at efficiency 1."""

    kind: np.ndarray  # (L,) column of the layer's compute term (index into FITTED_KINDS)
    compute_s: np.ndarray  # (L,) ops / peak FLOP/s
    memory_s: np.ndarray  # (L,) bytes / peak B/s
    workload: np.ndarray  # (L,) row index of the layer's workload
    n_layers: np.ndarray  # (W,) fused layers per workload (the overhead's regressor)

    @staticmethod
    def build(layers: list[list[LayerCost]], hw: Hardware, dtype_bytes: int = 4) -> "LayerTerms":
        flat = [(w, layer) for w, ls in enumerate(layers) for layer in ls]
        unknown = sorted({layer.op for _, layer in flat} - set(FITTED_KINDS))
        if unknown:
            raise OfaDeployError(f"layer kind {unknown[0]!r} has no fitted efficiency; known: "
                                 f"{', '.join(FITTED_KINDS)}")
        return LayerTerms(
            kind=np.array([FITTED_KINDS.index(layer.op) for _, layer in flat], dtype=np.int64),
            compute_s=np.array([layer_ops(layer) for _, layer in flat]) / (hw.peak_gflops * 1e9),
            memory_s=np.array([layer.bytes(dtype_bytes) for _, layer in flat], dtype=np.float64) / (hw.peak_gbps * 1e9),
            workload=np.array([w for w, _ in flat], dtype=np.int64),
            n_layers=np.array([len(ls) for ls in layers], dtype=np.float64),
        )

    def predict_s(self, theta: np.ndarray) -> np.ndarray:
        """(W,) workload seconds for ``theta`` = (1/eff per kind..., 1/eff_mem, overhead seconds)."""
        per_layer = np.maximum(self.compute_s * theta[self.kind], self.memory_s * theta[_MEM]) + theta[_OH]
        return np.bincount(self.workload, per_layer, minlength=len(self.n_layers))

    def design(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The linear model at ``theta``'s classification: (W, 7) design matrix, (L,) memory-bound mask."""
        mem_bound = self.memory_s * theta[_MEM] > self.compute_s * theta[self.kind]
        a = np.zeros((len(self.n_layers), len(PARAMS)))
        np.add.at(a, (self.workload[~mem_bound], self.kind[~mem_bound]), self.compute_s[~mem_bound])
        np.add.at(a[:, _MEM], self.workload[mem_bound], self.memory_s[mem_bound])
        a[:, _OH] = self.n_layers
        return a, mem_bound


def _theta(eff: RooflineEfficiency) -> np.ndarray:
    return np.array([1.0 / eff.compute(k) for k in FITTED_KINDS] + [1.0 / eff.mem, eff.overhead_us * 1e-6])


def _efficiency(theta: np.ndarray, prior: RooflineEfficiency) -> RooflineEfficiency:
    kinds = {k: float(1.0 / theta[i]) for i, k in enumerate(FITTED_KINDS)}
    return dataclasses.replace(prior, **kinds, mem=float(1.0 / theta[_MEM]), overhead_us=float(theta[_OH] * 1e6))


def _rel_err(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (pred - y) / y


# --------------------------------------------------------------------------------------- fit
@dataclass
class LearnedFit:
    """Efficiencies learned on a measured target, and how well they reproduce its workloads."""

    efficiency: RooflineEfficiency
    keys: list[str]
    measured_ms: np.ndarray
    fitted_ms: np.ndarray
    share_pct: dict[str, float]  # mean share of a workload's fitted time each parameter accounts for
    weakly_determined: tuple[str, ...]  # parameters left near the prior (too small a share to learn)
    memory_bound_pct: float  # share of fitted time spent in memory-bound layers
    iterations: int
    converged: bool
    rel_err_pct: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.rel_err_pct = _rel_err(self.fitted_ms, self.measured_ms) * 100

    @property
    def rms_pct(self) -> float:
        return float(np.sqrt(np.mean(self.rel_err_pct ** 2)))

    @property
    def max_pct(self) -> float:
        return float(np.max(np.abs(self.rel_err_pct)))

    @property
    def median_abs_pct(self) -> float:
        return float(np.median(np.abs(self.rel_err_pct)))

    def summary(self) -> dict[str, Any]:
        """JSON-ready: errors, shares, and the per-workload table."""
        return {"n_workloads": len(self.keys), "rms_pct": self.rms_pct, "max_pct": self.max_pct,
                "median_abs_pct": self.median_abs_pct, "share_pct": self.share_pct,
                "weakly_determined": list(self.weakly_determined), "memory_bound_pct": self.memory_bound_pct,
                "iterations": self.iterations, "converged": self.converged,
                "per_workload": {k: {"measured_ms": float(m), "fitted_ms": float(f), "rel_err_pct": float(e)}
                                 for k, m, f, e in zip(self.keys, self.measured_ms, self.fitted_ms, self.rel_err_pct)}}


def fit_efficiency(layers: list[list[LayerCost]], measured_ms: np.ndarray | list[float], hw: Hardware,
                   cfg: FitConfig = FitConfig(), keys: list[str] | None = None) -> LearnedFit:
    """Fit efficiencies so the roofline reproduces ``measured_ms[w]`` = time of workload ``layers[w]`` on ``hw``.

    Minimises the sum of squared *relative* residuals (every workload counts alike, small or large),
    plus ``cfg.prior_weight``-weighted pulls of every parameter towards the prior (default: the named
    guesses of ``hw.kind``).
    """
    y = np.asarray(measured_ms, dtype=np.float64) * 1e-3
    if len(layers) != len(y) or len(y) == 0:
        raise OfaDeployError(f"learned efficiency: need one measured time per workload, got {len(y)} for {len(layers)}")
    if not np.all(np.isfinite(y) & (y > 0)):
        raise OfaDeployError("learned efficiency: measured times must be positive and finite")
    terms = LayerTerms.build(layers, hw)
    prior_eff = cfg.prior or efficiency_for(hw.kind)
    prior = _theta(prior_eff)
    lower = np.array([1.0 / cfg.max_compute_eff] * len(FITTED_KINDS) + [1.0 / cfg.max_mem_eff, 0.0])
    lam = cfg.prior_weight
    prior_rows = np.diag(lam / prior)  # lam * (theta - prior) / prior

    def objective(theta: np.ndarray) -> float:
        return float(np.sum(_rel_err(terms.predict_s(theta), y) ** 2) + np.sum((lam * (theta - prior) / prior) ** 2))

    rhs = np.concatenate([np.ones_like(y), np.full(len(PARAMS), lam)])

    def run(theta: np.ndarray) -> tuple[np.ndarray, float, bool, int]:
        """Alternate classify/solve from ``theta``: (best iterate, its objective, settled, rounds)."""
        pattern, best, best_obj = None, theta, objective(theta)
        for it in range(1, cfg.max_iter + 1):
            a, mem_bound = terms.design(theta)
            if pattern is not None and np.array_equal(mem_bound, pattern):
                return best, best_obj, True, it - 1
            pattern = mem_bound
            m = np.vstack([a / y[:, None], prior_rows])
            theta = lower + nnls(m, rhs - m @ lower)  # theta >= lower, as z = theta - lower >= 0
            if objective(theta) < best_obj:
                best, best_obj = theta, objective(theta)
        return best, best_obj, False, cfg.max_iter

    # Alternating finds a local optimum of the piecewise-linear model, so start from a few
    # classifications (the prior's; everything compute-bound; bandwidth-starved) and keep the best.
    starts = []
    for start_mem in (prior[_MEM], lower[_MEM], 10.0):
        theta0 = np.maximum(prior, lower)
        theta0[_MEM] = max(start_mem, lower[_MEM])
        starts.append(run(theta0))
    best, _, converged, rounds = min(starts, key=lambda r: r[1])
    a, mem_bound = terms.design(best)
    fitted = terms.predict_s(best)
    share = {p: float(np.mean(a[:, i] * best[i] / fitted) * 100) for i, p in enumerate(PARAMS)}
    per_layer = np.maximum(terms.compute_s * best[terms.kind], terms.memory_s * best[_MEM])
    weak = tuple(p for p in PARAMS if share[p] < cfg.min_share_pct)
    if not converged:
        log.warning("learned efficiency: the compute/memory-bound classification did not settle in %d rounds; "
                    "kept the best iterate", cfg.max_iter)
    return LearnedFit(_efficiency(best, prior_eff), list(keys) if keys else [str(i) for i in range(len(y))],
                      y * 1e3, fitted * 1e3, share, weak,
                      float(per_layer[mem_bound].sum() / fitted.sum() * 100), rounds, converged)


def learn_from_profile(data: dict[str, Any], hw: Hardware, cfg: FitConfig = FitConfig()) -> LearnedFit:
    """Fit efficiencies to a profiled model's measured workloads (``latency_model.json`` as a dict)."""
    space, res, n_classes = data["space"], [int(r) for r in data["resolutions"]], data.get("n_classes")
    layers = workload_layers(space, res, n_classes)
    rows = [(k, v) for k, v in sorted(data["workloads"].items()) if v.get("source", "measured") == "measured"]
    unknown = [k for k, _ in rows if k not in layers]
    if unknown:
        raise OfaDeployError(f"latency model: workload {unknown[0]!r} is not a workload of {space} at {res}")
    if not rows:
        raise OfaDeployError("latency model: no measured workloads to learn from")
    keys = [k for k, _ in rows]
    return fit_efficiency([layers[k] for k in keys], [float(v["median_ms"]) for _, v in rows], hw, cfg, keys)


def e2e_check(data: dict[str, Any], hw: Hardware, eff: RooflineEfficiency) -> dict[str, Any]:
    """The learned roofline against the source's end-to-end measured calibration subnets (no correction)."""
    points = (data.get("calibration") or {}).get("points") or []
    rows = []
    for p in points:
        cfg = SubnetConfig.from_dict(p["config"], space=data["space"], where=f"calibration point {p.get('id')}")
        est = sum(roofline_layer_ms(layer, hw, eff) for layer in count_costs(cfg, data.get("n_classes")).layers)
        rows.append({"id": p.get("id"), "measured_ms": float(p["measured_ms"]), "estimated_ms": float(est),
                     "rel_err_pct": float((est - p["measured_ms"]) / p["measured_ms"] * 100)})
    errs = np.array([r["rel_err_pct"] for r in rows])
    return {"n": len(rows), "rms_pct": float(np.sqrt(np.mean(errs ** 2))) if len(rows) else None,
            "max_pct": float(np.max(np.abs(errs))) if len(rows) else None, "points": rows}


# ---------------------------------------------------------------------------- estimated model
def _kind_check(target: Any, source: Any) -> None:
    if getattr(target, "analytic_only", False) or target.kind == "vta":
        raise OfaDeployError(f"--target {target.name}: a VTA board has its own analytic model; nothing to estimate")
    if target.name == source.name:
        raise OfaDeployError(f"--estimate-from {source.name}: that is the target itself; profile it directly "
                             f"(ofa-deploy profile --target {target.name})")
    if target.kind != source.kind:
        raise OfaDeployError(f"--estimate-from {source.name}: a {source.kind} target cannot stand in for "
                             f"{target.name} ({target.kind}); allowed: a profiled {target.kind} target")


def build_estimate(target: Any, source: Any, source_data: dict[str, Any], cfg: FitConfig = FitConfig(),
                   source_path: str | None = None) -> tuple[dict[str, Any], LearnedFit]:
    """The ``estimated_model.json`` dict for registry spec ``target``, learned from ``source``'s profile."""
    from .roofline import spec_to_hardware

    _kind_check(target, source)
    src_hw, hw = spec_to_hardware(source), spec_to_hardware(target)
    fit = learn_from_profile(source_data, src_hw, cfg)
    db = source_data.get("database_sha256")
    tables = "tuned-measured" if db else "UNTUNED-measured"
    data = {
        "format": FORMAT_VERSION, "kind": "estimated", "target": target.name, "space": source_data["space"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "efficiency": dataclasses.asdict(fit.efficiency),
        "target_peaks": {"peak_gflops_fp32": hw.peak_gflops, "peak_gbps": hw.peak_gbps,
                         "cores": getattr(target, "cores", None), "source": getattr(target, "peak_source", None)},
        "learned_from": {
            "target": source.name, "model_file": source_path, "tables": tables, "database_sha256": db,
            "tvm_version": source_data.get("tvm_version"), "tvm_target": source_data.get("tvm_target"),
            "resolutions": source_data.get("resolutions"), "model_created": source_data.get("created"),
            "peak_gflops_fp32": src_hw.peak_gflops, "peak_gbps": src_hw.peak_gbps,
            "calibration": {k: (source_data.get("calibration") or {}).get(k) for k in ("a", "b", "n", "rms_pct")},
        },
        "fit": {**fit.summary(), "fit_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "prior"},
                "prior": dataclasses.asdict(cfg.prior or efficiency_for(src_hw.kind)),
                "e2e_check": e2e_check(source_data, src_hw, fit.efficiency)},
        "note": (f"ESTIMATE, not a measurement: analytic roofline per fused layer with efficiencies (fractions of "
                 f"peak) learned on {source.name}'s {tables} tables and assumed to carry over to {target.name}'s "
                 f"registry peaks. The source's end-to-end correction is not transferred. Parameters explaining "
                 f"< {cfg.min_share_pct:g} % of the fitted time (fit.weakly_determined) are not determined by "
                 f"the data."),
    }
    return data, fit


def describe_estimate(data: dict[str, Any], hw: Hardware) -> str:
    """The ``basis`` line shown next to ``source="estimated"``."""
    src = data["learned_from"]
    db = src.get("database_sha256")
    fit = data["fit"]
    return (f"analytic roofline, efficiencies learned on {src['target']} {src['tables']} tables "
            f"({f'db {db[:8]}' if db else 'no database'}, TVM {src.get('tvm_version')}, fit rms "
            f"{fit['rms_pct']:.0f} % over {fit['n_workloads']} workloads), {hw.name} peaks "
            f"{hw.peak_gflops:g} GFLOP/s {hw.peak_gbps:g} GB/s")


def efficiency_from_dict(data: dict[str, Any]) -> RooflineEfficiency:
    """The ``efficiency`` block of a file, validated: every field present, positive and finite."""
    eff = data["efficiency"]
    names = [f.name for f in dataclasses.fields(RooflineEfficiency)]
    values = {n: float(eff[n]) for n in names}
    bad = [n for n, v in values.items() if not (math.isfinite(v) and (v > 0 or (n == "overhead_us" and v >= 0)))]
    if bad:
        raise ValueError(f"efficiency.{bad[0]} = {values[bad[0]]}")
    return RooflineEfficiency(**values)


def save_estimate(path: str | Path, data: dict[str, Any]) -> None:
    """Write an estimated model atomically, after checking it reads back."""
    if data.get("format") != FORMAT_VERSION:
        raise OfaDeployError(f"estimated model format {data.get('format')!r}; expected {FORMAT_VERSION}")
    efficiency_from_dict(data)
    write_json(path, data)


def _warn_once(path: Path, reason: str) -> None:
    if (str(path), reason) not in _warned:
        _warned.add((str(path), reason))
        log.warning("%s not used: %s; falling back to the named-guess roofline efficiencies", path, reason)


def load_estimated_model(hw: Hardware, space: str | SearchSpace, n_classes: int | None = None,
                         label: str | None = None) -> TableLatencyModel | None:
    """``tuning_logs/<hw.name>/estimated_model.json`` as a latency model, or None (absent, unreadable, other space)."""
    path = target_dir(hw.name) / ESTIMATE_FILE
    if not path.is_file():
        return None
    sp = get_space(space)
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT_VERSION}")
        eff = efficiency_from_dict(data)
        basis = describe_estimate(data, hw)
    except (OSError, ValueError, KeyError, TypeError) as err:
        _warn_once(path, f"unreadable estimated model ({err})")
        return None
    if data.get("space") != sp.name:
        _warn_once(path, f"it was learned for space {data.get('space')}, not {sp.name}")
        return None
    log.warning("target %s: latency is an ESTIMATE (%s), labelled 'estimated'; no device of this target was timed",
                label or hw.name, basis)
    return TableLatencyModel(sp, lambda layer, act: roofline_layer_ms(layer, hw, eff, 4), target=label or hw.name,
                             dtype_bytes=4, n_classes=n_classes, basis=basis)


def guessed_model(hw: Hardware, space: str | SearchSpace, n_classes: int | None = None,
                  label: str | None = None) -> TableLatencyModel:
    """The roofline with today's named-guess efficiencies, for targets nothing was learned for."""
    eff = efficiency_for(hw.kind)
    hint = (f"; for efficiencies learned on a profiled target run 'ofa-deploy profile --target {hw.name} "
            f"--estimate-from x86-host'" if hw.kind == "cpu" and not (target_dir(hw.name) / ESTIMATE_FILE).is_file()
            else "")
    log.warning("target %s: latency is an analytic roofline ESTIMATE with named-guess efficiencies (%g GFLOP/s, "
                "%g GB/s peak), labelled 'estimated'%s", label or hw.name, hw.peak_gflops, hw.peak_gbps, hint)
    return TableLatencyModel(space, lambda layer, act: roofline_layer_ms(layer, hw, eff, 4), target=label or hw.name,
                             dtype_bytes=4, n_classes=n_classes,
                             basis=f"analytic roofline, named-guess efficiencies, {hw.name} peaks "
                                   f"{hw.peak_gflops:g} GFLOP/s {hw.peak_gbps:g} GB/s")


@dataclass
class EstimateReport:
    """What ``profile --estimate-from`` wrote."""

    path: Path
    data: dict[str, Any]
    fit: LearnedFit


def estimate_target(target: str, source: str, space: str | None = None, cfg: FitConfig = FitConfig(),
                    out_dir: str | Path | None = None) -> EstimateReport:
    """Learn efficiencies on ``source``'s profiled model and write ``target``'s ``estimated_model.json``.

    The source model must be the one search would use for ``source`` (same database and TVM as
    now), so the recorded provenance is true.
    """
    from ofa_deploy.compile.toolchain import installed_tvm_version
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.database import current_database_hash

    from .measured import mismatch, timing_source

    spec, src = get_target(target), get_target(source)
    _kind_check(spec, src)
    path = target_dir(src.name) / MODEL_FILE
    hint = f"run 'ofa-deploy profile --target {src.name}' first"
    if not path.is_file():
        raise OfaDeployError(f"--estimate-from {src.name}: no measured latency model at {path}; {hint}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise OfaDeployError(f"--estimate-from {src.name}: {path} is unreadable ({err}); {hint}") from None
    reason = mismatch(data, database_sha256=current_database_hash(src.name), tvm_version=installed_tvm_version(),
                      space=get_space(space or data.get("space")).name, n_classes=None,
                      data_layout=src.data_layout)
    if reason is not None:
        raise OfaDeployError(f"--estimate-from {src.name}: {path} is stale ({reason}); {hint}")
    if timing_source(data) == "emulated":
        raise OfaDeployError(f"--estimate-from {src.name}: {path} holds EMULATED timings (qemu), not a device's "
                             f"speed; nothing can be learned from them; profile the real board first")
    if not data.get("database_sha256"):
        log.warning("--estimate-from %s: its tables are of UNTUNED code; the learned efficiencies describe "
                    "untuned code", src.name)
    try:
        out, fit = build_estimate(spec, src, data, cfg, f"tuning_logs/{src.name}/{MODEL_FILE}")
    except (KeyError, TypeError) as err:
        raise OfaDeployError(f"--estimate-from {src.name}: {path} is malformed (missing or bad field {err}); "
                             f"{hint}") from None
    dest = Path(out_dir) if out_dir is not None else target_dir(spec.name)
    save_estimate(dest / ESTIMATE_FILE, out)
    log.info("estimate %s from %s: wrote %s (fit rms %.1f %% over %d workloads)", spec.name, src.name,
             dest / ESTIMATE_FILE, fit.rms_pct, len(fit.keys))
    return EstimateReport(dest / ESTIMATE_FILE, out, fit)


__all__ = ["EstimateReport", "FitConfig", "LayerTerms", "LearnedFit", "build_estimate",
           "describe_estimate", "e2e_check", "efficiency_from_dict", "estimate_target", "fit_efficiency",
           "guessed_model", "learn_from_profile", "load_estimated_model", "nnls", "save_estimate", "workload_layers"]
