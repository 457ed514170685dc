"""How strongly should timings follow the speed probe? One k per model against fitted ones (offline A/B).

``profile`` refers every timing to one speed state, ``t x (reference / probe) ** k``
(``latency.speed_state``). ``k`` is fitted within the calibration subnets' passes and shrunk toward
1 by its precision. This bench re-makes each model from its stored passes with k set three ways,
and scores each on accuracy rows of the same device (``bench/latency_accuracy.py`` CSVs, each row's
passes referred with the same k):

* ``fit``: the raw within-subnet fit (what profile used before shrinking),
* ``shrunk``: that fit shrunk toward 1 with prior sd ``--prior-sd`` (what profile does now at 0.1),
* ``k=1``: time proportional to the probe's reading, for every model.

Tables, calibration points and the correction are refitted from the passes each time; nothing is
timed. Prints the share within +-10 % per model and row set, and the mean over all pairs.

    python bench/elasticity.py --case MODEL=ROWS[,ROWS...] [--case ...] [--prior-sd 0.1]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click
import numpy as np

from ofa_deploy.latency.speed_state import DEFAULT_ELASTICITY, SpeedScaling, lowest_reading, passes_of
from ofa_deploy.latency.tables import lookup
from ofa_deploy.search_space.genes import configs_to_genes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_accuracy import remade_tables, row_config, row_passes  # noqa: E402


def share_within_10pct(model: dict, rows_files: list[Path], k: float) -> list[float]:
    """``model`` re-made from its passes with elasticity ``k``, scored on each rows file (share within +-10 %)."""
    space, res = model["space"], model["resolutions"]
    points = model["calibration"]["points"]
    passes = [passes_of(w) for w in model["workloads"].values()] + [passes_of(p) for p in points]
    scaling = SpeedScaling(lowest_reading(passes), k, True, 0, None)
    table, fixed, cal = remade_tables(model, scaling.timing)
    seen = {p["id"] for p in points}
    out = []
    for path in rows_files:
        rows = [r for r in csv.DictReader(path.open()) if int(r["image_size"]) in res and r["id"] not in seen]
        predicted = cal.a * lookup(configs_to_genes([row_config(r, space) for r in rows], space), table, fixed,
                                   space) + cal.b
        measured = np.array([scaling.timing(row_passes(r)) for r in rows])
        out.append(float(np.mean(np.abs(predicted / measured - 1) <= 0.10)))
    return out


@click.command()
@click.option("--case", "cases", multiple=True, required=True, metavar="MODEL=ROWS[,ROWS...]",
              help="A latency_model.json and accuracy-row CSVs of its device.")
@click.option("--prior-sd", type=click.FloatRange(min=0.0, min_open=True), default=0.1, show_default=True,
              help="How far k may stray from 1 before the fit says otherwise (speed_state.PRIOR_SD).")
def main(cases: tuple[str, ...], prior_sd: float) -> None:
    totals: dict[str, list[float]] = {"fit": [], "shrunk": [], "k=1": []}
    for case in cases:
        model_path, _, rows = case.partition("=")
        if not rows:
            raise click.BadParameter(f"{case!r}: expected MODEL=ROWS[,ROWS...]", param_hint="--case")
        model = json.loads(Path(model_path).read_text())
        fit = SpeedScaling.from_dict(model["speed_scaling"])
        if fit is None or fit.stderr is None:
            raise click.BadParameter(f"{model_path}: no fitted speed scaling to compare", param_hint="--case")
        raw = fit.fitted_k if fit.fitted_k is not None else fit.elasticity
        weight = prior_sd ** 2 / (prior_sd ** 2 + fit.stderr ** 2)
        ks = {"fit": raw, "shrunk": DEFAULT_ELASTICITY + weight * (raw - DEFAULT_ELASTICITY), "k=1": 1.0}
        files = [Path(p) for p in rows.split(",")]
        scores = {name: share_within_10pct(model, files, k) for name, k in ks.items()}
        for name in totals:
            totals[name] += scores[name]
        click.echo(f"{Path(model_path).name}: fit {raw:.2f} +- {fit.stderr:.2f} -> shrunk {ks['shrunk']:.2f}")
        for i, path in enumerate(files):
            click.echo(f"    {path}: " + "   ".join(f"{name} {100 * scores[name][i]:.0f} %" for name in totals))
    click.echo(f"mean over {len(totals['fit'])} model x row-set pairs (prior sd {prior_sd:g}): "
               + "   ".join(f"{name} {100 * np.mean(v):.1f} %" for name, v in totals.items()))


if __name__ == "__main__":
    main()
