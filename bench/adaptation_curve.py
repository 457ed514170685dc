"""Few-shot adaptation: how accurate an adapted latency model is after n calibration subnets.

``ofa-deploy profile --target T --adapt --calibrate N`` takes the nearest device's per-block tables and
fits only ``measured = a * table + b`` on N subnets timed on T (HELP, NeurIPS 2021: ~10 samples).
This script answers "how many subnets are enough" without timing anything again (for a full profile's
correction too: from 24 subnets on with its stage terms, ``latency.calibration``): it refits the
correction on the first n of the model's own calibration subnets (the picks are prefix-stable, so
they are what ``--calibrate n`` would have timed: random subnets for models made before the ends of a
pool were picked, the ends in turns since), for each n, and scores each refit on the rows of
``bench/latency_accuracy.py`` (unseen subnets timed end to end on T, with the model's database; each
row's passes referred to a speed state as this model refers them, so a model re-made from the same
calibration timings, e.g. with re-scaled tables, is scored on the same rows; ``--model`` picks one):

    ofa-deploy profile --target x86-host:-avx512f --adapt --resolutions 224 --calibrate 12
    python bench/latency_accuracy.py --target x86-host:-avx512f --n 50 --out DIR
    python bench/adaptation_curve.py --target x86-host:-avx512f --rows DIR/latency_accuracy_<folder>.csv

``--rescale-by FOLDER`` re-scales a model made before ``--adapt`` re-scaled its tables (by the task
times of FOLDER's database, the one its device built with) and scores that, on the same rows.

``--own-tables MODEL --time-blocks 0,10,20`` answers "how many blocks timed here are enough"
(``profile --adapt --time-blocks K``) without timing them again: MODEL is a full profile of the same
device, and its entries stand in for the K blocks the adapt run would time (the same builds, the
same timing); the untimed blocks move by their stage's ratio (``latency.anchor``), then the
correction is refitted per n as above.

Prints, per n: share within +-10 %, MAPE, Kendall tau, and the minutes of device time that n
subnets cost (their share of the adapt run's wall time, ``--adapt-minutes``); plots the curve.
"""

from __future__ import annotations

import csv
import logging
import sys
import textwrap
from pathlib import Path

import click
import numpy as np

from ofa_deploy.atomic import atomic_path
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.latency.measured import Calibration, MeasuredLatencyModel
from ofa_deploy.latency.speed_state import kept_timing
from ofa_deploy.latency.tables import stage_sums
from ofa_deploy.search_space import SubnetConfig
from ofa_deploy.search_space.genes import configs_to_genes
from ofa_deploy.targets import get_target
from ofa_deploy.tuning_logs.folders import target_dir
from ofa_deploy.tuning_logs.layout import MODEL_FILE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_accuracy import accuracy_metrics, row_config, row_passes  # noqa: E402

log = logging.getLogger("adaptation_curve")


def refit_curve(model: MeasuredLatencyModel, rows: list[dict[str, str]], sizes: list[int]) -> list[dict[str, float]]:
    """Metrics of the model refitted on its first n calibration points, for each n in ``sizes``."""
    points = model.meta["calibration"]["points"]
    space = model.meta["space"]
    unseen = [row_config(r, space) for r in rows]
    measured = np.array([kept_timing(row_passes(r), model.scaling) for r in rows])  # referred as this model refers
    # the calibration subnets against this model's tables (re-scaled tables give other sums than the stored ones)
    cal_cfgs = [SubnetConfig.from_dict(p["config"]) for p in points]
    cal_measured = np.array([p["measured_ms"] for p in points])
    out = []
    for n in sizes:
        if n > len(points):
            raise OfaDeployError(f"--sizes {n}: the model has {len(points)} calibration subnets; allowed up to that")
        x, stages, res = sums(model, cal_cfgs[:n])
        cal = Calibration.fit(x, cal_measured[:n], stages, res)  # with stage terms from 24 subnets on
        out.append({**accuracy_metrics(cal.predict_sums(*sums(model, unseen)), measured), "n": n, "a": cal.a,
                    "b": cal.b, "terms": cal.stage_scale is not None})
    return out


def sums(model: MeasuredLatencyModel, cfgs: list[SubnetConfig]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(table sums, stage sums, resolutions) of ``cfgs`` under the model's tables: what a calibration fits on."""
    genes = configs_to_genes(cfgs, model.space)
    return model.table_sum(genes), stage_sums(genes, model.table, model.space), np.array([c.image_size for c in cfgs])


def anchored_model(model: MeasuredLatencyModel, own: MeasuredLatencyModel, k: int) -> MeasuredLatencyModel:
    """``model`` as ``profile --adapt --time-blocks k`` would make it, with ``own``'s entries as the k timings."""
    from ofa_deploy.latency.anchor import anchor_tables, block_shares, choose_blocks

    meta = model.meta
    adopted = {key: w["median_ms"] for key, w in meta["workloads"].items()}
    missing = sorted(set(adopted) - set(own.meta["workloads"]))
    if missing:
        raise OfaDeployError(f"--own-tables: no entry for {missing[0]} (profile the same resolutions)")
    picked = choose_blocks(block_shares(meta["space"], meta["resolutions"], adopted), k)
    anchored, _ = anchor_tables(adopted, {key: own.meta["workloads"][key]["median_ms"] for key in picked})
    workloads = {key: {**w, "median_ms": anchored[key]} for key, w in meta["workloads"].items()}
    return MeasuredLatencyModel.from_dict({**meta, "workloads": workloads})


def rescale_model(model: MeasuredLatencyModel, folder: Path, target: str) -> MeasuredLatencyModel:
    """``model`` with its adopted tables re-scaled by ``folder``'s task times (``latency.profile.rescale_tables``)."""
    from ofa_deploy.latency.profile import rescale_tables
    from ofa_deploy.tuning_logs.database import database_hash, resolve_database

    meta, source = model.meta, model.meta["adapted_from"]
    if source.get("rescaled"):
        raise OfaDeployError("--rescale-by: this model's tables are re-scaled already")
    database = resolve_database(folder)
    if database is None:
        raise OfaDeployError(f"--rescale-by {folder}: no database there (a tuned device folder of tuning_logs/)")
    workloads, info = rescale_tables(meta["workloads"], target_dir_of(source["folder"]), source["database_sha256"],
                                     [(folder, database_hash(database))], target, meta["space"],
                                     tuple(meta["resolutions"]), meta["n_classes"])
    if info is None:
        raise OfaDeployError(f"--rescale-by {folder}: no task times to re-scale by (see the log)")
    return MeasuredLatencyModel.from_dict({**meta, "workloads": workloads, "adapted_from": {**source, "rescaled": info}})


def target_dir_of(folder_name: str) -> Path:
    """A device folder of tuning_logs/ by name (the user's, else the repository's)."""
    from ofa_deploy.tuning_logs.folders import device_folders

    for folder, _ in device_folders(shipped=True):
        if folder.name == folder_name:
            return folder
    raise OfaDeployError(f"the model's tables come from {folder_name}, which is not in tuning_logs/")


def plot(path: Path, curves: dict[int, list[dict[str, float]]], minutes_per_subnet: float, minutes_per_block: float,
         title: str, full: bool = False) -> None:
    """Share within +-10 % (solid) and tau (dashed) against minutes on the device, one colour per number of blocks
    timed (x: calibration subnets when the minutes are unknown); ``full``: a full profile's curve, with #16's goals
    for one (99 % within +-10 %, tau 0.95) instead of adaptation's (90 %). Agg, atomic."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    timed = np.isfinite(minutes_per_subnet) and (np.isfinite(minutes_per_block) or list(curves) == [0])
    for i, (k, curve) in enumerate(curves.items()):
        x = [c["n"] * minutes_per_subnet + k * (minutes_per_block if k else 0.0) if timed else c["n"] for c in curve]
        colour = f"C{i}"
        ax.plot(x, [100 * c["within_10pct"] for c in curve], "o-", color=colour,
                label="within +-10 % (%)" if full else f"{k} blocks timed: within +-10 % (%)")
        ax.plot(x, [100 * c["kendall_tau"] for c in curve], "s--", color=colour, alpha=0.6, label="  Kendall tau x 100")
    if full:
        ax.axhline(99, color="tab:green", lw=0.8, ls=":", label="goal: 99 % within +-10 %")
        ax.axhline(95, color="tab:red", lw=0.8, ls=":", label="goal: tau 0.95")
    else:
        ax.axhline(90, color="tab:green", lw=0.8, ls=":", label="goal: 90 % within +-10 %")
    if timed:
        ax.axvline(15, color="0.5", lw=0.8, ls=":", label="15 minutes")
    ax.set_xlabel("minutes on the new device (calibration subnets + blocks timed)" if timed else
                  "calibration subnets timed end to end" if full else "calibration subnets timed on the new device")
    ax.set_ylim(0, 130)  # the top for the legend
    ax.set_yticks(range(0, 101, 20))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", ncol=2)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


@click.command()
@click.option("--target", required=True, help="The adapted device's target, e.g. x86-host:-avx512f.")
@click.option("--rows", "rows_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="bench/latency_accuracy.py's CSV for this model.")
@click.option("--sizes", default="3,4,6,8,10,12", show_default=True, help="Calibration subnets per point.")
@click.option("--adapt-minutes", type=float, default=None, help="Wall minutes of the adapt run (for the minutes axis).")
@click.option("--model", "model_path", default=None, type=click.Path(dir_okay=False, exists=True),
              help="The adapted model to refit (default: the target's); e.g. a copy made before re-running --adapt.")
@click.option("--rescale-by", "rescale_by", default=None, type=click.Path(file_okay=False, exists=True),
              help="First re-scale the model's tables block by block by the task times of this device folder's "
                   "database over the source's (what profile --adapt does now; for models made before it).")
@click.option("--own-tables", "own_path", default=None, type=click.Path(dir_okay=False, exists=True),
              help="A full profile of the same device: its entries stand in for the blocks --time-blocks times.")
@click.option("--time-blocks", "time_blocks", default="0", show_default=True,
              help="Blocks timed on the device (with --own-tables), e.g. 0,10,20,40.")
@click.option("--block-minutes", type=float, default=None, help="Wall minutes per timed block (for the minutes column).")
def main(target: str, rows_path: str, sizes: str, adapt_minutes: float | None, model_path: str | None,
         rescale_by: str | None, own_path: str | None, time_blocks: str, block_minutes: float | None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        spec = get_target(target)
        path = Path(model_path) if model_path else target_dir(spec.name) / MODEL_FILE
        model = MeasuredLatencyModel.load(path)
        if rescale_by is not None and not model.meta.get("adapted_from"):
            raise OfaDeployError(f"--rescale-by: {path} is a full profile (its own tables), not an adapted model")
        if rescale_by is not None:
            model = rescale_model(model, Path(rescale_by), spec.name)
        db, tvm = model.meta.get("database_sha256"), model.meta.get("tvm_version")
        resolutions = {str(r) for r in model.meta["resolutions"]}  # rows at others: the model cannot predict them
        rows = [r for r in csv.DictReader(open(rows_path))  # timings of the same code; referred by this model
                if (r["database_sha256"] or None) == db and r["tvm_version"] == tvm and r.get("pass_ms")
                and r["image_size"] in resolutions]
        if not rows:
            raise OfaDeployError(f"--rows {rows_path}: no row timed with this model's database ({db}) and TVM "
                                 f"({tvm}); run bench/latency_accuracy.py --target {target} first")
        ns = sorted({int(v) for v in sizes.split(",")})
        if ns[0] < 2:
            raise OfaDeployError(f"--sizes: each at least 2 (an affine fit), got {ns[0]}")
        ks = sorted({int(v) for v in time_blocks.split(",")})
        if ks != [0] and own_path is None:
            raise OfaDeployError("--time-blocks: give --own-tables (a full profile of this device) to take them from")
        own = MeasuredLatencyModel.load(Path(own_path)) if own_path else None
        curves = {k: refit_curve(anchored_model(model, own, k) if k else model, rows, ns) for k in ks}
    except (OfaDeployError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    per = adapt_minutes / model.meta["calibration"]["n"] if adapt_minutes else float("nan")
    adapted = model.meta.get("adapted_from") or {}
    rescaled = ", re-scaled per block" if adapted.get("rescaled") else ""
    tables = f"{adapted['folder']}'s tables{rescaled}" if adapted else "its own tables (full profile)"
    click.echo(f"{spec.name}: {tables}, calibrated here; {len(rows)} unseen subnets ({path})")
    if ks != [0]:
        click.echo(f"blocks timed here: this device's entries from {own_path}")
    per_block = block_minutes if block_minutes else float("nan")
    click.echo("| blocks timed | calibration subnets | minutes | within +-10 % | MAPE | Kendall tau | a | b (ms) | "
               "stage terms |")
    click.echo("|---|---|---|---|---|---|---|---|---|")
    for k, curve in curves.items():
        for c in curve:
            minutes = c["n"] * per + (k * per_block if k else 0.0)
            click.echo(f"| {k} | {c['n']} | {minutes:.1f} | {100 * c['within_10pct']:.0f} % | {c['mape_pct']:.2f} % | "
                       f"{c['kendall_tau']:.3f} | {c['a']:.3f} | {c['b']:+.3f} | {'yes' if c['terms'] else 'no'} |")
    stem = path.stem if model_path else target_dir(spec.name).name
    tag = ("_rescaled" if rescale_by else "") + (f"_{ks[-1]}blocks" if ks[-1] else "")
    png = Path(rows_path).with_name(f"adaptation_curve_{stem}{tag}.png")
    plot(png, curves, per, per_block, f"{spec.name}: {tables}, calibration"
         f"{', blocks timed here' if ks != [0] else ''}, {len(rows)} unseen subnets", full=not adapted)
    click.echo(f"plot: {png}")


if __name__ == "__main__":
    main()
