"""Which subnets to calibrate on: the ends of a random pool against as many random subnets (offline A/B).

``profile`` fits ``measured = a * table_sum + b`` on ``--calibrate`` subnets timed end to end
(``latency.profile.calibration_subnets``). This bench asks which subnets make that line best
without timing anything: it takes an accuracy run's rows (unseen subnets timed end to end on the
model's device, ``bench/latency_accuracy.py``), and in each trial splits them at random into a
*pool* of :data:`CALIBRATION_POOL` rows and a *test* set of the rest. From the pool it calibrates on
n rows chosen two ways and scores each fit on the test rows:

* ``random``: n rows of the pool at random (what ``profile`` did before),
* ``ends``: the n lowest and highest table sums of the pool, in turns (``latency.profile.ends_in_turns``,
  what ``profile`` does now with its pool of seeded random subnets).

The model's tables and speed referral are kept; only the correction is refitted. Prints, per n, the
mean share of test rows within +-10 % over the trials, its 10th percentile (a bad draw), Kendall tau
(the correction is monotone, so tau is the tables' and the same for both) and the spread of the
fitted slope; ``--out`` plots the share against n.

    python bench/calibration_design.py --model tuning_logs/x86_64-znver3-2c/latency_model.json \\
        --rows bench/results/znver3-full/latency_accuracy_x86_64-znver3-2c.csv
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import click
import numpy as np

from ofa_deploy.atomic import atomic_path
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.latency.measured import Calibration, MeasuredLatencyModel
from ofa_deploy.latency.profile import CALIBRATION_POOL, ends_in_turns
from ofa_deploy.latency.speed_state import kept_timing
from ofa_deploy.search_space.genes import configs_to_genes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_accuracy import row_config, row_passes  # noqa: E402

DESIGNS = ("random", "ends")


def pick(design: str, pool: np.ndarray, sums: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (into the rows) of the n calibration rows that ``design`` takes from ``pool``."""
    if design == "random":
        return rng.choice(pool, n, replace=False)
    return pool[ends_in_turns(sums[pool], n)]


def compare(table_sums: np.ndarray, measured: np.ndarray, sizes: list[int], trials: int,
            seed: int) -> dict[int, dict[str, dict[str, float]]]:
    """``{n: {design: metrics}}`` over ``trials`` random pool/test splits (the same splits for both designs)."""
    rng = np.random.default_rng(seed)
    if len(measured) < CALIBRATION_POOL + 10:
        raise OfaDeployError(f"--rows: {len(measured)} rows at the model's resolutions; need at least "
                             f"{CALIBRATION_POOL + 10} (a pool of {CALIBRATION_POOL} and 10 to test)")
    out: dict[int, dict[str, dict[str, float]]] = {}
    for n in sizes:
        if not 2 <= n <= CALIBRATION_POOL:
            raise OfaDeployError(f"--sizes {n}: allowed 2 to {CALIBRATION_POOL} (the pool)")
        shares: dict[str, list[float]] = {d: [] for d in DESIGNS}
        slopes: dict[str, list[float]] = {d: [] for d in DESIGNS}
        for _ in range(trials):
            order = rng.permutation(len(measured))
            pool, test = order[:CALIBRATION_POOL], order[CALIBRATION_POOL:]
            for design in DESIGNS:
                chosen = pick(design, pool, table_sums, n, rng)
                cal = Calibration.fit(table_sums[chosen], measured[chosen])
                rel = (cal.a * table_sums[test] + cal.b) / measured[test] - 1
                shares[design].append(float(np.mean(np.abs(rel) <= 0.10)))
                slopes[design].append(cal.a)
        out[n] = {d: {"within_10pct": float(np.mean(shares[d])), "p10": float(np.percentile(shares[d], 10)),
                      "slope_sd": float(np.std(slopes[d]))} for d in DESIGNS}
    return out


def plot(path: Path, results: dict[int, dict[str, dict[str, float]]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = sorted(results)
    for design, style in zip(DESIGNS, ("o--", "s-")):
        ax.plot(sizes, [100 * results[n][design]["within_10pct"] for n in sizes], style, label=f"{design} (mean)")
        ax.fill_between(sizes, [100 * results[n][design]["p10"] for n in sizes],
                        [100 * results[n][design]["within_10pct"] for n in sizes], alpha=0.15)
    ax.set_xlabel("calibration subnets")
    ax.set_ylabel("unseen subnets within +-10 % (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(title="band: 10th percentile of trials")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


@click.command()
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="latency_model.json whose tables and speed referral score the rows")
@click.option("--rows", "rows_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="bench/latency_accuracy.py CSV timed on the model's device")
@click.option("--sizes", default="3,4,6,8,12", show_default=True, help="calibration sizes n, comma-separated")
@click.option("--trials", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the pool/test splits")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="PNG of the share against n")
def main(model_path: str, rows_path: str, sizes: str, trials: int, seed: int, out: str | None) -> None:
    logging.basicConfig(level=logging.ERROR)  # a degenerate draw's "slope <= 0" fallback is expected here
    model = MeasuredLatencyModel.load(model_path)
    space = model.meta["space"]
    rows = [r for r in csv.DictReader(Path(rows_path).open()) if int(r["image_size"]) in model.resolutions]
    table_sums = model.table_sum(configs_to_genes([row_config(r, space) for r in rows], space))
    measured = np.array([kept_timing(row_passes(r), model.scaling) for r in rows])
    try:
        n_list = [int(v) for v in sizes.split(",")]
    except ValueError:
        raise click.BadParameter(f"{sizes!r}: comma-separated integers, e.g. 3,4,12", param_hint="--sizes")
    try:
        results = compare(table_sums, measured, n_list, trials, seed)
    except OfaDeployError as err:
        raise click.UsageError(str(err))  # exit 2
    click.echo(f"{Path(model_path).name} ({model.basis}); {len(rows)} rows of {rows_path}; pool "
               f"{CALIBRATION_POOL}, test {len(rows) - CALIBRATION_POOL}, {trials} splits")
    click.echo(f"{'n':>3} | {'random: within +-10 %':>22} | {'ends: within +-10 %':>20} | slope sd random / ends")
    for n in n_list:
        r, e = results[n]["random"], results[n]["ends"]
        click.echo(f"{n:>3} | {100 * r['within_10pct']:8.1f} % (p10 {100 * r['p10']:3.0f} %) | "
                   f"{100 * e['within_10pct']:6.1f} % (p10 {100 * e['p10']:3.0f} %) | "
                   f"{r['slope_sd']:.3f} / {e['slope_sd']:.3f}")
    if out:
        plot(Path(out), results, f"calibration design: {Path(rows_path).parent.name}/{Path(model_path).name}")
        click.echo(f"plot: {out}")


if __name__ == "__main__":
    main()
