"""Speed-referred timings against the fastest steady pass, from stored passes (offline A/B).

On the development VM the steady state's speed drifts by ~10 % over tens of minutes, and the speed
probe (``compile.speed``) reads that drift too: a profile timed in one spell and an accuracy bench
timed in another disagree by the drift, whatever the model. ``profile`` therefore refers every
timing to one speed state (``latency.speed_state``). This bench takes a profiled latency model and
an accuracy run (``bench/latency_accuracy.py`` rows, which keep every pass's probe reading),
re-fits tables and calibration from the stored passes both ways, and compares their accuracy on the
bench's subnets:

* each entry's fastest steady pass (the rule before speed referral), and
* the median of its steady passes, each scaled to the lowest reading, ``t x (reference / probe) ** k``,
  with ``k`` fitted on the model's own calibration subnets only, so the bench's rows stay unseen
  (what ``profile`` does now).

Nothing is timed. Prints one line each.

    python bench/probe_normalisation.py --model runs/latency_model.json --rows bench/results/latency_accuracy_x.csv
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click
import numpy as np

from ofa_deploy.latency.speed_state import Pass, SpeedScaling, fastest_steady, lowest_reading
from ofa_deploy.latency.tables import lookup
from ofa_deploy.search.predictor import kendall_tau
from ofa_deploy.search_space import SubnetConfig
from ofa_deploy.search_space.genes import configs_to_genes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_accuracy import remade_tables  # noqa: E402


def _passes(entries: list[dict]) -> list[Pass]:
    return [(p["median_ms"], p["probe_us"]) for p in entries]


def _numbers(field: str) -> list[float]:
    """A space-separated CSV field of latency_accuracy rows."""
    return [float(v) for v in field.split()]


def _row_config(row: dict[str, str]) -> SubnetConfig:
    return SubnetConfig(ks=[int(v) for v in _numbers(row["ks"])], e=[int(v) for v in _numbers(row["e"])],
                        d=[int(v) for v in _numbers(row["d"])], image_size=int(row["image_size"]))


@click.command()
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--rows", "rows_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="latency_accuracy CSV of a run with pass_probe_us (subnets the model never saw).")
def main(model_path: str, rows_path: str) -> None:
    model = json.loads(Path(model_path).read_text())
    rows = list(csv.DictReader(Path(rows_path).open()))
    space, res = model["space"], model["resolutions"]
    work = {key: _passes(w["passes"]) for key, w in model["workloads"].items()}
    points = model["calibration"]["points"]
    calib = [_passes(p["passes"]) for p in points]
    bench = [list(zip(_numbers(r["pass_ms"]), _numbers(r["pass_probe_us"]))) for r in rows]
    scaling = SpeedScaling.fit(calib, lowest_reading([*work.values(), *calib]))
    click.echo(f"timings {scaling.describe()} (calibration subnets; the bench's own passes would give "
               f"k {SpeedScaling.fit(bench, scaling.reference_us).elasticity:.2f}, not used)")
    bench_cfgs = configs_to_genes([_row_config(r) for r in rows], space)
    timings = (("fastest steady pass", fastest_steady), ("speed-referred, median", scaling.timing))
    for name, timing in timings:
        table, fixed, cal = remade_tables(model, timing)
        predicted = cal.a * lookup(bench_cfgs, table, fixed, space) + cal.b
        measured = np.array([timing(g) for g in bench])
        rel = (predicted - measured) / measured
        click.echo(f"{name:36s} calibration rms {cal.rms_pct:.1f} % | {len(rel)} unseen: within +-10 % "
                   f"{np.mean(np.abs(rel) <= 0.1) * 100:.0f} %, MAPE {np.mean(np.abs(rel)) * 100:.2f} %, "
                   f"bias {rel.mean() * 100:+.1f} %, tau {kendall_tau(predicted, measured):.3f}")


if __name__ == "__main__":
    main()
