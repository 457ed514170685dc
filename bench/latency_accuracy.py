"""How well the profiled latency model predicts compiled end-to-end latency, on subnets it never saw.

Draws ``--n`` seeded random subnets at the model's resolutions (seed 1000 by default: disjoint
from the calibration seed, and checked against the calibration subnets; a smaller ``--n`` is a
prefix of a larger one), compiles each like ``ofa-deploy compile`` with the target's database,
times it exactly as ``profile`` times its tables (``--passes`` passes over all subnets; with a
speed-referred model the median of the steady passes referred to the model's speed state with the
model's own elasticity (``latency.speed_state``), else the fastest steady pass), and compares with
the model's prediction; the unreferred fastest steady pass is compared too. Prints the share within +-10 %, MAPE, Kendall tau; writes
``bench/results/latency_accuracy_<device folder>.csv`` (one row per subnet with every pass and its
speed-probe reading; resumable: rerun the same command after a kill, builds are cached until
timed) and a predicted-vs-measured scatter PNG beside it.

    ofa-deploy profile --target x86-host            # first: the model
    python bench/latency_accuracy.py --target x86-host --n 100

``--score-rows CSV`` times nothing: it scores the model on rows an earlier run timed with the same
database hash and TVM version (the CSV does not record which databases builds borrowed from: give it
rows of this device's folder), e.g. for another model of the same device, each row's passes referred
to this model's speed state; rows at resolutions the model does not cover, or that were its
calibration subnets, are left out. ``--model FILE`` scores another model file of this device (an
earlier profile, kept) on those rows instead of the one in ``tuning_logs/``. ``--retest OTHER`` (repeatable) also
says how well another run's timings of the same subnets reproduce these rows (:func:`retest`), and rows with four or
more passes are split into odd and even passes (:func:`split_half`): the ceiling under any model's score, since a
model is made of timings from one run and scored on another's.

``--turns N`` times each pass's subnets in one process, in N turns, each turn's speed divided out (as ``profile
--turns``): on a shared VM a second such run reproduces the rows 100 % within +-10 % where one-by-one runs reproduce
them 66-92 %. ``--ruler`` (with ``--turns``) also times the model's calibration subnets in the same turns and divides
each pass by how slow they ran against the times the model kept for them: the rows are then at the model's speed
state, whatever the hour's (BENCHMARKS.md, "Timing in turns").

Goal (#16, a full profile): >= 99 % within +-10 % and tau >= 0.95. Measure on an idle machine.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import textwrap
import time
from math import erf
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import numpy as np

from ofa_deploy.atomic import atomic_path, write_text
from ofa_deploy.compile.profile import ONE_BY_ONE, ProfileSettings
from ofa_deploy.compile.toolchain import installed_tvm_version
from ofa_deploy.compile.types import LatencyMeasurement
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.latency.measured import Calibration, MeasuredLatencyModel, mismatch, tables_from_workloads
from ofa_deploy.latency.profile import measure_subnets, sample_subnets
from ofa_deploy.latency.speed_state import (Pass, SpeedScaling, fastest_steady, kept_timing, pass_scatter_pct,
                                             passes_of, probed, referred_steady)
from ofa_deploy.latency.tables import lookup
from ofa_deploy.search.predictor import kendall_tau
from ofa_deploy.search_space import SubnetConfig
from ofa_deploy.search_space.genes import configs_to_genes, random_genes, resolution_indices
from ofa_deploy.targets import get_target
from ofa_deploy.tuning_logs.database import current_database_hash, default_database
from ofa_deploy.tuning_logs.folders import target_dir
from ofa_deploy.tuning_logs.layout import MODEL_FILE

REPO = Path(__file__).resolve().parents[1]
GOALS = "goal (#16, a full profile): >= 99 % within +-10 %, Kendall tau >= 0.95"
FIELDS = ("id", "image_size", "ks", "e", "d", "predicted_ms", "measured_ms", "fastest_ms", "pass_ms", "pass_probe_us",
          "pass_ruler", "timing", "rel_err_pct", "database_sha256", "tvm_version", "model_created")
log = logging.getLogger("latency_accuracy")


def accuracy_metrics(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Share within +-10 %, MAPE (%), Kendall tau, and the largest error (%)."""
    rel = (np.asarray(predicted) - np.asarray(measured)) / np.asarray(measured)
    return {"n": len(rel), "within_10pct": float(np.mean(np.abs(rel) <= 0.10)) if len(rel) else float("nan"),
            "mape_pct": float(np.mean(np.abs(rel)) * 100) if len(rel) else float("nan"),
            "kendall_tau": kendall_tau(predicted, measured), "max_err_pct": float(np.max(np.abs(rel)) * 100)
            if len(rel) else float("nan")}


def remade_tables(model: dict, timing: Callable[[Sequence[Pass]], float]) -> tuple[np.ndarray, np.ndarray, Calibration]:
    """A model file's tables and correction made again from its stored passes, each entry (block or calibration
    subnet) kept by ``timing``: how the offline A/B benches (``probe_normalisation.py``, ``elasticity.py``) try
    another way of keeping timings without timing anything."""
    space, res = model["space"], model["resolutions"]
    points = model["calibration"]["points"]
    kept = {key: timing(passes_of(w)) for key, w in model["workloads"].items()}
    table, fixed = tables_from_workloads(space, res, kept)
    cal_genes = configs_to_genes([SubnetConfig.from_dict(p["config"]) for p in points], space)
    cal = Calibration.fit(lookup(cal_genes, table, fixed, space), np.array([timing(passes_of(p)) for p in points]))
    return table, fixed, cal


def summary_lines(predicted: np.ndarray, measured: np.ndarray, repeat: dict[str, float], referred: bool) -> list[str]:
    """The accuracy and repeatability lines both modes print (``run`` and ``--score-rows``)."""
    stats = accuracy_metrics(predicted, measured)
    err = (np.asarray(predicted) - np.asarray(measured)) / np.asarray(measured) * 100
    return [f"within +-10 %: {100 * stats['within_10pct']:.1f} %   MAPE {stats['mape_pct']:.2f} % (max error "
            f"{stats['max_err_pct']:.1f} %)   Kendall tau {stats['kendall_tau']:.3f}   bias {err.mean():+.1f} %, sd "
            f"{err.std():.1f} %",
            f"repeatability: a subnet's steady passes{' (referred)' if referred else ''} scatter by "
            f"{repeat['median_sd_pct']:.1f} % (median sd over {repeat['n']} subnets); single passes within +-10 % "
            f"of their subnet's measured value: {100 * repeat['single_within_10pct']:.1f} %"]


def repeatability(pass_groups: Sequence[Sequence[Pass]], scaling: SpeedScaling | None) -> dict[str, float]:
    """How well the bench's own measurements repeat: the floor under any model's error.

    ``pass_groups`` holds each subnet's passes (ms, probe reading). With a speed-referred model each
    steady pass is referred to the model's speed state first (as the kept value is), so the scatter
    left is what referring does not explain. ``single_within_10pct`` is the share of single steady
    passes within +-10 % of their subnet's kept value: roughly what a perfect model would score
    against one pass (the kept value, a median or minimum of several, scatters less).
    """
    rel, n = [], 0
    for passes in pass_groups:
        values = np.array(referred_steady(passes, scaling))
        if len(values) < 2:
            continue
        kept = kept_timing(passes, scaling)
        rel.extend((values - kept) / kept)
        n += 1
    if not n:
        return {"n": 0, "median_sd_pct": float("nan"), "single_within_10pct": float("nan")}
    return {"n": n, "median_sd_pct": pass_scatter_pct(pass_groups, scaling),
            "single_within_10pct": float(np.mean(np.abs(np.array(rel)) <= 0.10))}


def agreement(earlier: np.ndarray, later: np.ndarray) -> dict[str, float]:
    """How well one timing of some subnets (``earlier``) predicts another (``later``) once scaled by their median
    ratio: :func:`accuracy_metrics` plus ``scale``, the error's ``sd_pct`` and ``noise_pct``, the noise of one
    timing if both are equally noisy and independent (sd / sqrt 2), and ``noise_free_within_10pct``: the share
    within +-10 % that a model with no error of its own would score against such timings (a normal error of that
    sd). The scale is fitted on ``later`` itself, so the share is an upper bound for a model calibrated on the
    other run."""
    earlier, later = np.asarray(earlier, dtype=float), np.asarray(later, dtype=float)
    scale = float(np.median(later / earlier))
    stats = accuracy_metrics(scale * earlier, later)
    sd = float(np.std(np.log(later / (scale * earlier)), ddof=1)) if len(later) > 1 else float("nan")
    noise = sd / np.sqrt(2)
    return {**stats, "scale": scale, "sd_pct": 100 * sd, "noise_pct": 100 * noise,
            "noise_free_within_10pct": within_10pct_of_normal(noise)}


def retest(rows: Sequence[dict[str, str]], other: Sequence[dict[str, str]], scaling: SpeedScaling | None,
           predicted: dict[str, float] | None = None) -> dict[str, float] | None:
    """:func:`agreement` of ``other``'s kept timings (another run, the same code) with ``rows``' on the subnets
    both timed, each kept as the bench keeps it (referred to ``scaling``), and with a model's ``predicted`` latency
    per subnet id its :func:`error_budget` (keys prefixed ``model_``); None when fewer than 2 are shared."""
    mine = {r["id"]: r for r in rows}
    shared = [r for r in other if r["id"] in mine]
    if len(shared) < 2:
        return None
    there = np.array([kept_timing(row_passes(r), scaling) for r in shared])
    here = np.array([kept_timing(row_passes(mine[r["id"]]), scaling) for r in shared])
    out = agreement(there, here)
    if predicted is not None:
        budget = error_budget(np.array([predicted[r["id"]] for r in shared]), here, there)
        out.update({f"model_{k}": v for k, v in budget.items()})
    return out


def within_10pct_of_normal(sd: float, bias: float = 0.0) -> float:
    """Share of a normal log error (``bias``, ``sd``, natural log) inside +-10 %: what a model scores against timings
    whose only error is that one."""
    if sd <= 0:
        return float(abs(bias) <= np.log(1.1))
    z = np.sqrt(2) * sd
    return float(0.5 * (erf((np.log(1.1) - bias) / z) + erf((np.log(1.1) + bias) / z)))


def error_budget(predicted: np.ndarray, here: np.ndarray, there: np.ndarray) -> dict[str, float]:
    """A model's error on one run's timings (``here``) split with another run of the same subnets (``there``).

    Each run's ``bias`` (mean log error of the prediction, %; + predicts slow): the speed of its hour against the
    model's calibration. ``sd_pct``: the error's sd here. ``shared_sd_pct``: the part of it that repeats in the
    other run (the covariance of the two runs' errors about their biases): the model's own error, e.g. its tables';
    independent timing noise does not repeat. ``noise_free_within_10pct``: what the model would score on timings
    with no noise and no bias (that shared sd alone).
    """
    e_here, e_there = np.log(predicted / here), np.log(predicted / there)
    shared = float(np.cov(e_here, e_there)[0, 1]) if len(e_here) > 2 else float("nan")
    shared_sd = float(np.sqrt(max(shared, 0.0)))
    return {"bias_here_pct": 100 * float(e_here.mean()), "bias_there_pct": 100 * float(e_there.mean()),
            "sd_pct": 100 * float(np.std(e_here, ddof=1)), "shared_sd_pct": 100 * shared_sd,
            "noise_free_within_10pct": within_10pct_of_normal(shared_sd)}


def split_half(rows: Sequence[dict[str, str]], scaling: SpeedScaling | None) -> dict[str, float] | None:
    """:func:`agreement` of each row's odd passes with its even ones (1, 3, 5 against 2, 4, 6), the repeatability
    of a kept value of half the passes within one run (passes minutes apart: slow drift is in it, a change between
    runs is not); rows with fewer than 4 passes are left out (None: fewer than 2 left)."""
    halves = []
    for r in rows:
        passes = row_passes(r)
        if len(passes) >= 4:
            halves.append((kept_timing(passes[0::2], scaling), kept_timing(passes[1::2], scaling)))
    if len(halves) < 2:
        return None
    odd, even = np.array(halves).T
    return agreement(odd, even)


def ceiling_line(what: str, a: dict[str, float]) -> str:
    """One report line for :func:`agreement`'s figures (and :func:`error_budget`'s, when ``a`` has them)."""
    line = (f"{what}: {a['n']} subnets, x {a['scale']:.3f} (median ratio) within +-10 %: "
            f"{100 * a['within_10pct']:.1f} %, Kendall tau {a['kendall_tau']:.3f}, sd {a['sd_pct']:.1f} % "
            f"(one timing's noise {a['noise_pct']:.1f} %: a model with no error of its own would score "
            f"{100 * a['noise_free_within_10pct']:.0f} % within +-10 %)")
    if "model_sd_pct" in a:
        line += (f"; the model's error here (sd {a['model_sd_pct']:.1f} %) repeats there by sd "
                 f"{a['model_shared_sd_pct']:.1f} % (its own; the rest is timing noise), its bias "
                 f"{a['model_bias_here_pct']:+.1f} % here, {a['model_bias_there_pct']:+.1f} % there (the hour's "
                 f"speed): on timings with neither it would score {100 * a['model_noise_free_within_10pct']:.0f} % "
                 f"within +-10 %")
    return line


def ceiling_lines(rows: Sequence[dict[str, str]], scaling: SpeedScaling | None,
                  others: Sequence[tuple[Path, Sequence[dict[str, str]]]] = (),
                  predicted: dict[str, float] | None = None) -> list[str]:
    """The report's ceiling lines: :func:`split_half` of ``rows`` and :func:`retest` against each other run (with
    the model's error budget when its ``predicted`` latencies are given)."""
    lines = []
    half = split_half(rows, scaling)
    if half:
        lines.append(ceiling_line("split-half (odd passes against even ones, this run)", half))
    for path, other in others:
        if other is rows:
            lines.append(f"retest: {path} holds these rows")
            continue
        again = retest(rows, other, scaling, predicted)
        lines.append(ceiling_line(f"retest ({path} timed the same subnets)", again) if again else
                     f"retest: {path} shares fewer than 2 subnets with these rows")
    return lines


def read_rows(path: Path, db: str | None, tvm: str | None, created: str, timing: str) -> dict[str, dict[str, str]]:
    """Rows of an earlier run of this model (same database, TVM, model, way of timing); others are dropped."""
    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open()))
    keep = {r["id"]: r for r in rows if (r["database_sha256"] or None) == db and r["tvm_version"] == str(tvm)
            and r["model_created"] == created and r.get("pass_ms") and row_timing(r) == timing}
    if len(keep) < len(rows):
        log.warning("%s: %d rows of another model/database/TVM/way of timing dropped", path, len(rows) - len(keep))
    return keep


def row_timing(row: dict[str, str]) -> str:
    """A CSV row's way of timing (rows from before the column: one by one)."""
    return row.get("timing") or ONE_BY_ONE


def row_config(row: dict[str, str], space: str) -> SubnetConfig:
    """The subnet a CSV row timed."""
    return SubnetConfig(ks=[int(v) for v in row["ks"].split()], e=[int(v) for v in row["e"].split()],
                        d=[int(v) for v in row["d"].split()], image_size=int(row["image_size"]), space=space)


def row_passes(row: dict[str, str]) -> list[Pass]:
    """A CSV row's passes as (ms, probe reading or None), each divided by its pass's ruler where it has one
    (``--ruler``: then the passes are at the speed state of the model whose calibration subnets were the ruler)."""
    probes = [float(v) or None for v in (row.get("pass_probe_us") or "").split()]
    rulers = [float(v) for v in (row.get("pass_ruler") or "").split()]
    return [(float(v) / (rulers[i] if i < len(rulers) else 1.0), probes[i] if i < len(probes) else None)
            for i, v in enumerate(row["pass_ms"].split())]


def referred_by_probe(rows: Sequence[dict[str, str]], scaling: SpeedScaling | None) -> bool:
    """Whether the rows' passes are referred by the speed probe (timed one by one, with a speed-referred model)."""
    return scaling is not None and all(probed(row_passes(r)) for r in rows)


def measured_label(rows: Sequence[dict[str, str]], scaling: SpeedScaling | None) -> str:
    """What the rows' measured value is, for the plot's axis and the printout."""
    if referred_by_probe(rows, scaling):
        return "speed-referred median pass"
    if rows and all(r.get("pass_ruler") for r in rows):
        return "fastest pass in turns, referred by the model's calibration subnets timed in the same turns"
    if rows and all(row_timing(r) != ONE_BY_ONE for r in rows):
        return "fastest pass in turns"
    return "fastest steady pass"


def ruler(now_ms: dict[str, float], model_ms: dict[str, float]) -> float:
    """How slow this pass ran against the model's speed state: the median, over the model's calibration subnets
    timed in the same turns as the rows, of their time now over the time the model kept for them."""
    return float(np.median([now_ms[k] / model_ms[k] for k in now_ms]))


def first_passes(row: dict[str, str], n: int | None) -> dict[str, str]:
    """``row`` with only its first ``n`` passes (all when ``n`` is None)."""
    if n is None:
        return row
    return {**row, **{k: " ".join((row.get(k) or "").split()[:n]) for k in ("pass_ms", "pass_probe_us", "pass_ruler")}}


def write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def scatter_png(path: Path, predicted: np.ndarray, measured: np.ndarray, title: str, measured_label: str) -> None:
    """Predicted vs measured with the y = x line and the +-10 % band (Agg, atomic); the title's lines are wrapped."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lo, hi = 0.9 * min(predicted.min(), measured.min()), 1.1 * max(predicted.max(), measured.max())
    line = np.array([lo, hi])
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="+-10 %")
    ax.plot(line, line, color="0.3", lw=1, label="y = x")
    ax.scatter(measured, predicted, s=14, zorder=3)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(textwrap.fill(f"measured latency, ms ({measured_label})", 70), fontsize=8)
    ax.set_ylabel("predicted latency (ms, estimated)")
    ax.set_title("\n".join(textwrap.fill(line, 80) for line in title.split("\n")), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


@click.command()
@click.option("--target", default="x86-host", show_default=True)
@click.option("--n", "n_subnets", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--seed", type=int, default=1000, show_default=True, help="Must differ from the calibration seed.")
@click.option("--passes", type=click.IntRange(min=1), default=ProfileSettings().passes, show_default=True,
              help="Timing passes over all subnets; each subnet's fastest steady pass counts (as in profile).")
@click.option("--retries", type=click.IntRange(min=0), default=ProfileSettings().retry_passes, show_default=True,
              help="Extra passes for subnets whose every pass ran slowed (as profile --retries).")
@click.option("--turns", type=click.IntRange(min=0), default=0, show_default=True,
              help="0: each pass times the subnets one after another, as profile does. N: each pass calls all of "
                   "them in N turns in one process, each turn's speed divided out (the VM's drift hits all alike).")
@click.option("--ruler", "use_ruler", is_flag=True,
              help="With --turns: also time the model's calibration subnets in the same turns and refer each pass to "
                   "the model's speed state by how fast they ran against the times the model kept for them.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=str(REPO / "bench" / "results"),
              show_default=True)
@click.option("--build-only", is_flag=True, help="Only compile the subnets into the module cache (builds need "
              "no idle machine: run them while something else works, then time on an idle one).")
@click.option("--keep-modules", is_flag=True, help="Keep the built subnets in the module cache after their last "
              "pass (~20 MB each), for a second run into another --out (a retest) without building again.")
@click.option("--update-benchmarks", is_flag=True, help="Also rewrite the BENCHMARKS.md section.")
@click.option("--score-rows", "score_rows", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Time nothing: score the model on this CSV's rows (timed earlier with the same code).")
@click.option("--model", "model_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="With --score-rows: score this model file of the device (e.g. an earlier profile) instead of "
                   "tuning_logs/<device>/'s.")
@click.option("--retest", "retests", type=click.Path(dir_okay=False, exists=True), multiple=True,
              help="With --score-rows: also say how well this CSV (another run's rows of the same subnets) reproduces "
                   "them, the ceiling under any model's score (repeatable).")
@click.option("--first-passes", "first", type=click.IntRange(min=1), default=None,
              help="With --score-rows: keep only each row's first N passes (what a run of N passes would have said).")
def main(target: str, n_subnets: int, seed: int, passes: int, retries: int, turns: int, use_ruler: bool, out_dir: str,
         build_only: bool, keep_modules: bool,
         update_benchmarks: bool, score_rows: str | None, model_file: str | None, retests: tuple[str, ...],
         first: int | None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if score_rows:
            rescore(target, Path(score_rows), Path(out_dir), Path(model_file) if model_file else None,
                    [Path(r) for r in retests], first)
            return
        if retests or first:
            raise OfaDeployError("--retest and --first-passes: score rows given with --score-rows; give it too")
        if model_file:
            raise OfaDeployError("--model: scores a model file on --score-rows rows; a timed run measures the "
                                 "device's current model (give --score-rows too, or drop --model)")
        if use_ruler and not turns:
            raise OfaDeployError("--ruler: times the model's calibration subnets in the same turns as the rows; give "
                                 "--turns N too")
        run(target, n_subnets, seed, passes, retries, turns, Path(out_dir), build_only, keep_modules, use_ruler,
            update_benchmarks)
    except OfaDeployError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


def current_model(target: str, path: Path | None = None) -> tuple[object, Path, MeasuredLatencyModel, str | None, str]:
    """The target's spec, model path (``path``, else its device folder's model), model, database hash and TVM
    version; refused unless the model describes the code compiled now and covers every workload."""
    spec = get_target(target)
    path = path or target_dir(spec.name) / MODEL_FILE
    if not path.is_file():
        raise OfaDeployError(f"no latency model at {path}: run 'ofa-deploy profile --target {spec.name}' first")
    model = MeasuredLatencyModel.load(path)
    db, tvm = current_database_hash(spec.name), installed_tvm_version()
    reason = mismatch(model.meta, database_sha256=db, tvm_version=tvm, space=model.meta["space"], n_classes=None)
    if reason:
        raise OfaDeployError(f"{path} does not describe the code compiled now: {reason}")
    if not model.complete:
        raise OfaDeployError(f"{path} is a partial profile; profile all workloads first")
    return spec, path, model, db, tvm


def rescore(target: str, rows_path: Path, out_dir: Path, model_path: Path | None = None,
            retests: Sequence[Path] = (), keep_passes: int | None = None) -> None:
    """``--score-rows``: the current model (or ``model_path``) scored on rows timed earlier with the same code, and
    the rows against ``retests`` (other runs' rows of the same subnets; see the docstring), each row cut to its
    first ``keep_passes`` passes if given."""
    spec, path, model, db, tvm = current_model(target, model_path)
    meta = model.meta
    calibrated = {p["id"] for p in meta["calibration"]["points"]}
    resolutions = {str(r) for r in model.resolutions}

    def usable(csv_path: Path) -> list[dict[str, str]]:
        return [first_passes(r, keep_passes) for r in csv.DictReader(csv_path.open())
                if (r["database_sha256"] or None) == db
                and r["tvm_version"] == str(tvm) and r.get("pass_ms") and r["image_size"] in resolutions
                and r["id"] not in calibrated]

    rows = usable(rows_path)
    if len(rows) < 2:
        raise OfaDeployError(f"--score-rows {rows_path}: {len(rows)} rows timed with this code (database {db}, TVM "
                             f"{tvm}) at r{','.join(sorted(resolutions))}; allowed: a CSV this bench wrote for it")
    cfgs = [row_config(r, meta["space"]) for r in rows]
    p = model.predict(configs_to_genes(cfgs, meta["space"]))
    m = np.array([kept_timing(row_passes(r), model.scaling) for r in rows])
    stats = accuracy_metrics(p, m)
    repeat = repeatability([row_passes(r) for r in rows], model.scaling)
    device = target_dir(spec.name).name
    kept = f"_{model_path.stem}" if model_path else ""  # two models scored into one folder keep two plots
    png = out_dir / f"latency_accuracy_{device}_rescored{kept}.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    scatter_png(png, p, m, "\n".join([  # scatter_png wraps each line
        f"{spec.name} ({device}): {model.basis}",
        f"{stats['n']} subnets timed earlier ({rows_path.name}): {100 * stats['within_10pct']:.0f} % within +-10 %, "
        f"MAPE {stats['mape_pct']:.1f} %, Kendall tau {stats['kendall_tau']:.3f}"]),
        measured_label(rows, model.scaling))
    click.echo("\n".join([
        f"target {spec.name}; model {path} ({model.basis})",
        f"{stats['n']} subnets from {rows_path}{f' (first {keep_passes} passes)' if keep_passes else ''} "
        f"(timed {len({r['model_created'] for r in rows})} run(s) earlier with "
        f"this code; {measured_label(rows, model.scaling)}), measured {m.min():.2f}..{m.max():.2f} ms",
        *summary_lines(p, m, repeat, model.scaling is not None),
        *ceiling_lines(rows, model.scaling, [(other, rows if other.resolve() == rows_path.resolve() else usable(other))
                                             for other in retests],
                       {r["id"]: float(v) for r, v in zip(rows, p)}), GOALS,
        f"scatter: {png}"]))


def time_with_ruler(todo: list[SubnetConfig], have: dict[str, int], points: list[dict], passes: int, turns: int,
                    keep_modules: bool, build_only: bool, spec: Any, database: Path | None, n_classes: int,
                    keep: Callable[..., None]) -> None:
    """``--ruler``: each pass times the rows' subnets and the model's calibration subnets in the same turns, and
    keeps every row's pass with that pass's :func:`ruler`.

    Why: on a shared VM the level of a whole pass moves by 10-30 % from one minute to the next (the turns
    divide out what moves within a pass, not that); the calibration subnets, timed now beside the rows and
    then for the model, say by how much, which the speed probe does not (BENCHMARKS.md, "Timing in turns").
    """
    cal_cfgs = [SubnetConfig.from_dict(p["config"]) for p in points]
    model_ms = {p["id"]: float(p["measured_ms"]) for p in points}
    for p in range(passes):
        rows_now = [c for c in todo if have.get(c.id, 0) <= p]
        if not rows_now:
            continue
        now: dict[str, LatencyMeasurement] = {}
        last = p + 1 == passes
        settings = ProfileSettings(passes=p + 1, turns=turns, keep_modules=keep_modules or not last)
        measure_subnets(cal_cfgs + rows_now, spec, database, n_classes, settings=settings,
                        passes_done={c.id: passes if build_only else p for c in cal_cfgs + rows_now},
                        on_result=lambda key, _p, m, _record: now.__setitem__(key, m))
        if build_only:
            return
        level = ruler({k: now[k].median_ms for k in model_ms}, model_ms)
        log.info("pass %d: the model's %d calibration subnets ran at %.3fx the times it kept for them", p + 1,
                 len(model_ms), level)
        for c in rows_now:
            keep(c.id, p, now[c.id], {}, level)


def run(target: str, n_subnets: int, seed: int, passes: int, retries: int, turns: int, out_dir: Path, build_only: bool,
        keep_modules: bool, use_ruler: bool, update_benchmarks: bool) -> None:
    spec, path, model, db, tvm = current_model(target)
    meta = model.meta
    cal = meta["calibration"]
    if seed == cal.get("seed"):
        raise OfaDeployError(f"--seed {seed} is the calibration seed; use another (default 1000)")
    subnets = sample_subnets(meta["space"], model.resolutions, n_subnets, seed, model.table)
    seen = {p["id"] for p in cal["points"]} & {s.id for s in subnets}
    assert not seen, f"subnets {sorted(seen)} were calibration subnets: the model has seen them"
    predicted = model.predict(configs_to_genes(subnets, meta["space"]))
    batch = random_genes(np.random.default_rng(seed), 10_000, meta["space"],
                         r_choices=resolution_indices(meta["space"], model.resolutions))
    start = time.perf_counter()
    model.predict(batch)
    click.echo(f"query: 10,000 subnets predicted in {(time.perf_counter() - start) * 1e3:.2f} ms (one batch call)")

    out_dir.mkdir(parents=True, exist_ok=True)
    device = target_dir(spec.name).name  # results of two CPUs never share a file (x86-host is this CPU)
    csv_path, png_path = out_dir / f"latency_accuracy_{device}.csv", out_dir / f"latency_accuracy_{device}.png"
    timing = ProfileSettings(turns=turns).timing  # one subnet after another (as profile), or all of them in turns
    timing += " with the model's calibration subnets as ruler" if use_ruler else ""
    rows = read_rows(csv_path, db, tvm, meta["created"], timing)
    database = default_database(spec.name)
    pred_of = {cfg.id: float(pred) for cfg, pred in zip(subnets, predicted)}
    scaling = model.scaling  # the model's speed state: each row's passes are referred to it, as its tables were
    by_id = {cfg.id: cfg for cfg in subnets}

    def keep(sid: str, pass_index: int, m: LatencyMeasurement, record: dict, level: float | None = None) -> None:
        cfg, pred = by_id[sid], pred_of[sid]
        old = rows.get(sid, {})

        def then(column: str) -> list[str]:  # the row's earlier passes (a resumed run's)
            return (old.get(column) or "").split()[:pass_index]

        row = {"pass_ms": " ".join(then("pass_ms") + [f"{m.median_ms:.4f}"]),
               "pass_probe_us": " ".join(then("pass_probe_us") + [f"{m.probe_us or 0.0:.3f}"]),
               "pass_ruler": " ".join(then("pass_ruler") + ([f"{level:.4f}"] if level else []))}
        passes = row_passes(row)
        kept = kept_timing(passes, scaling)
        rows[sid] = {"id": sid, "image_size": cfg.image_size, "ks": " ".join(map(str, cfg.ks)),
                     "e": " ".join(map(str, cfg.e)), "d": " ".join(map(str, cfg.d)),
                     "predicted_ms": f"{pred:.4f}", "measured_ms": f"{kept:.4f}",
                     "fastest_ms": f"{fastest_steady(passes):.4f}", **row, "timing": timing,
                     "rel_err_pct": f"{(pred - kept) / kept * 100:.2f}",
                     "database_sha256": db or "", "tvm_version": str(tvm), "model_created": meta["created"]}
        write_rows(csv_path, list(rows.values()))

    have = {sid: len(r.get("pass_ms", "").split()) for sid, r in rows.items()}
    todo = [cfg for cfg in subnets if have.get(cfg.id, 0) < passes]
    log.info("%d of %d subnets to build/time (%d passes each)", len(todo), len(subnets), passes)
    if todo and use_ruler:
        time_with_ruler(todo, have, cal["points"], passes, turns, keep_modules, build_only, spec, database,
                        meta["n_classes"], keep)
    elif todo:
        settings = ProfileSettings(passes=passes, retry_passes=retries, turns=turns, keep_modules=keep_modules)
        measure_subnets(todo, spec, database, meta["n_classes"], settings=settings,
                        passes_done={c.id: passes for c in todo} if build_only else have, on_result=keep)
    if build_only:
        click.echo(f"built {len(todo)} subnets into the module cache; rerun without --build-only to time them")
        return
    mine = [rows[s.id] for s in subnets]
    p = np.array([float(r["predicted_ms"]) for r in mine])
    m = np.array([float(r["measured_ms"]) for r in mine])
    stats = accuracy_metrics(p, m)
    raw = accuracy_metrics(p, np.array([float(r["fastest_ms"]) for r in mine]))
    repeat = repeatability([row_passes(r) for r in mine], scaling)
    title = "\n".join([  # scatter_png wraps each line
        f"{spec.name} ({device}): {model.basis}",
        f"{stats['n']} unseen subnets: {100 * stats['within_10pct']:.0f} % within +-10 %, "
        f"MAPE {stats['mape_pct']:.1f} %, Kendall tau {stats['kendall_tau']:.3f}"])
    scatter_png(png_path, p, m, title, measured_label(mine, scaling))
    lines = [f"target {spec.name}; model {path} ({model.basis})",
             f"{stats['n']} unseen subnets (seed {seed}) at {','.join(map(str, model.resolutions))} px, "
             f"measured {m.min():.2f}..{m.max():.2f} ms",
             *summary_lines(p, m, repeat, scaling is not None), *ceiling_lines(mine, scaling), GOALS,
             *([f"measured: {measured_label(mine, scaling)}"] if not referred_by_probe(mine, scaling) else []),
             *([f"measured: median steady pass referred to the model's speed state ({scaling.describe()}, k from "
                f"its calibration subnets); unreferred, the fastest steady pass: {100 * raw['within_10pct']:.1f} % "
                f"within +-10 %, MAPE {raw['mape_pct']:.2f} %, tau {raw['kendall_tau']:.3f}"]
               if referred_by_probe(mine, scaling) else []),
             f"rows: {csv_path}; scatter: {png_path}"]
    click.echo("\n".join(lines))
    if update_benchmarks:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import update_benchmarks_md

        where = out_dir.resolve()
        shown = where.relative_to(REPO) if where.is_relative_to(REPO) else where
        out = "" if where == REPO / "bench" / "results" else f" --out {shown}"
        body = (f"`python bench/latency_accuracy.py --target {spec.name} --n {n_subnets} --seed {seed} "
                f"--passes {passes} --retries {retries}{f' --turns {turns}' if turns else ''}"
                f"{' --ruler' if use_ruler else ''}{out}`\n\n```\n"
                + "\n".join(lines[:-1]) + "\n```\n")
        update_benchmarks_md(f"Latency model accuracy ({device})", body)


if __name__ == "__main__":
    main()
