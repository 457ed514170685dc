"""Would scaling each timing pass to the speed probe's floor make the latency model hold? (offline analysis)

On the development VM the steady state's speed drifts by ~10 % over tens of minutes, and the speed
probe (``compile.speed``) reads that drift too: a profile timed in one spell and an accuracy bench
timed in another disagree by the drift, whatever the model. This bench takes a profiled latency
model and an accuracy run (``bench/latency_accuracy.py`` rows, which keep every pass's probe
reading), and compares the model's accuracy on the bench's subnets

* as profiled (each model's fastest steady pass, as ``profile`` keeps it), and
* with every steady pass scaled to the floor, ``t x (floor / probe) ** k``, before taking the
  median pass; ``k`` (how strongly a subnet's time follows the probe) is fitted on the model's
  own calibration subnets only (within-subnet regression of log time on log probe), so the
  bench's rows stay unseen.

Nothing is timed: it re-fits tables and calibration from the stored passes. Prints one line each.

    python bench/probe_normalisation.py --model runs/latency_model.json --rows bench/results/latency_accuracy_x.csv
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click
import numpy as np

from ofa_deploy.compile.speed import CONTENDED_RATIO
from ofa_deploy.latency.measured import Calibration, tables_from_workloads
from ofa_deploy.latency.tables import lookup
from ofa_deploy.search.predictor import kendall_tau
from ofa_deploy.search_space import SubnetConfig
from ofa_deploy.search_space.genes import configs_to_genes

Passes = tuple[np.ndarray, np.ndarray]  # pass medians (ms), probe readings (us)


def steady(passes: Passes, floor: float) -> Passes:
    """The passes read as steady (all of the calmest ones if none was)."""
    ms, probe = passes
    keep = probe <= CONTENDED_RATIO * floor
    return (ms[keep], probe[keep]) if keep.any() else (ms[probe == probe.min()], probe[probe == probe.min()])


def elasticity(groups: list[Passes], floor: float) -> float:
    """d log(time) / d log(probe) within subnets, pooled over ``groups`` (least squares)."""
    xs, ys = [], []
    for group in groups:
        ms, probe = steady(group, floor)
        if len(ms) >= 3:
            xs.append(np.log(probe) - np.log(probe).mean())
            ys.append(np.log(ms) - np.log(ms).mean())
    x, y = np.concatenate(xs), np.concatenate(ys)
    return float(x @ y / (x @ x))


def fastest(group: Passes, floor: float, k: float) -> float:
    return float(steady(group, floor)[0].min())


def normalised(group: Passes, floor: float, k: float) -> float:
    ms, probe = steady(group, floor)
    return float(np.median(ms * (floor / probe) ** k))


def _passes(entries: list[dict]) -> Passes:
    return np.array([p["median_ms"] for p in entries]), np.array([p["probe_us"] for p in entries])


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
    bench = [(np.array(_numbers(r["pass_ms"])), np.array(_numbers(r["pass_probe_us"]))) for r in rows]
    floor = min(float(g[1].min()) for g in [*work.values(), *calib, *bench])
    k = elasticity(calib, floor)
    click.echo(f"probe floor {floor:.3f} us; elasticity k = {k:.2f} (calibration subnets; the bench's own would be "
               f"{elasticity(bench, floor):.2f}, not used)")
    cal_cfgs = configs_to_genes([SubnetConfig.from_dict(p["config"]) for p in points], space)
    bench_cfgs = configs_to_genes([_row_config(r) for r in rows], space)
    timings = (("fastest steady pass (as profiled)", fastest), ("scaled to the probe floor, median", normalised))
    for name, timing in timings:
        table, fixed = tables_from_workloads(space, res, {key: timing(g, floor, k) for key, g in work.items()})
        cal = Calibration.fit(lookup(cal_cfgs, table, fixed, space), np.array([timing(g, floor, k) for g in calib]))
        predicted = cal.a * lookup(bench_cfgs, table, fixed, space) + cal.b
        measured = np.array([timing(g, floor, k) for g in bench])
        rel = (predicted - measured) / measured
        click.echo(f"{name:36s} calibration rms {cal.rms_pct:.1f} % | {len(rel)} unseen: within +-10 % "
                   f"{np.mean(np.abs(rel) <= 0.1) * 100:.0f} %, MAPE {np.mean(np.abs(rel)) * 100:.2f} %, "
                   f"bias {rel.mean() * 100:+.1f} %, tau {kendall_tau(predicted, measured):.3f}")


if __name__ == "__main__":
    main()
