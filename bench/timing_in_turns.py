"""Why ``profile --turns``: how much of a timing on this machine is the machine's drift, and how much is left in turns.

Compiles three subnets of the space (the accuracy bench's fastest, middle and slowest by the
device's latency model, else ``compare_runtimes``'s min / mid / max) like ``ofa-deploy compile``,
then calls them in turns in one process for ``--turns`` turns (``compile.time_interleaved``: each
turn one untimed and ``--block`` timed calls of each, in rotating order). The turns are cut into
windows of ``--window`` turns; per window it prints each subnet's median (what a timing of that
subnet alone, in that window, would have said) and the subnets' ratios once each turn's common
speed is divided out (``compile.speed.in_turns``: what ``--turns`` keeps). The spread of the first
over windows is the drift a subnet timed on its own carries; the spread of the second, what is
left when models share their turns. Writes a PNG of both over time.

    python bench/timing_in_turns.py --target x86-host --turns 3000 --window 100
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

from ofa_deploy.atomic import atomic_path
from ofa_deploy.compile import time_interleaved
from ofa_deploy.compile.speed import in_turns
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.export import seeded_input
from ofa_deploy.search_space import SubnetConfig
from ofa_deploy.targets import get_target
from ofa_deploy.tuning_logs.identity import host_identity

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("timing_in_turns")


def three_subnets(target: str) -> list[SubnetConfig]:
    """The fastest, middle and slowest of the accuracy bench's 50 subnets by the device's model; without a model,
    compare_runtimes' min, mid and max."""
    from ofa_deploy.latency.measured import load_measured_model
    from ofa_deploy.latency.profile import sample_subnets
    from ofa_deploy.search_space import DEFAULT_SPACE
    from ofa_deploy.search_space.genes import configs_to_genes

    model = load_measured_model(target, DEFAULT_SPACE)
    if model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from compare_runtimes import SUBNETS

        return [SUBNETS[k] for k in sorted(SUBNETS, key=lambda k: k.startswith("max") * 2 + k.startswith("mid"))]
    subnets = sample_subnets(model.meta["space"], model.resolutions, 50, 1000, model.table)
    order = np.argsort(model.predict(configs_to_genes(subnets, model.meta["space"])))
    return [subnets[i] for i in (order[0], order[len(order) // 2], order[-1])]


def window_spreads(samples: list[list[float]], block: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per window: each model's median (rows: windows) and its latency in turns relative to the first model's."""
    turns = len(samples[0]) // block
    medians, ratios = [], []
    for start in range(0, turns - window + 1, window):
        part = [s[start * block:(start + window) * block] for s in samples]
        medians.append([float(np.median(s)) for s in part])
        lat = in_turns(part, block).latency_ms
        ratios.append([v / lat[0] for v in lat])
    return np.array(medians), np.array(ratios)


def plot(path: Path, medians: np.ndarray, ratios: np.ndarray, names: list[str], window: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(medians)) * window
    for i, name in enumerate(names):
        ax.plot(x, medians[:, i] / np.median(medians[:, i]), label=f"{name} alone (window median / its median)")
    for i, name in enumerate(names[1:], start=1):
        ax.plot(x, ratios[:, i] / np.median(ratios[:, i]), "--", label=f"{name} / {names[0]} in turns")
    ax.set_xlabel(f"turn (windows of {window})")
    ax.set_ylabel("relative to its median")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


@click.command()
@click.option("--target", default="x86-host", show_default=True)
@click.option("--turns", type=click.IntRange(min=2), default=3000, show_default=True)
@click.option("--window", type=click.IntRange(min=1), default=100, show_default=True,
              help="Turns per window (a window of 3 subnets x 4 calls x ~6 ms: ~8 s).")
@click.option("--block", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=str(REPO / "bench" / "results"),
              show_default=True)
def main(target: str, turns: int, window: int, block: int, out_dir: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from ofa_deploy.deploy import CompileOptions, compile_subnet

    try:
        if window * 2 > turns:
            raise OfaDeployError(f"--window {window}: give at least two windows' worth of --turns (got {turns})")
        spec = get_target(target)
        cfgs = three_subnets(spec.name)
        with tempfile.TemporaryDirectory(prefix="ofa_deploy_turns_") as tmp:
            paths = [compile_subnet(cfg, CompileOptions(target=spec.name, out_dir=f"{tmp}/{i}", random_weights=True,
                                                        verify=False)) / "subnet.so" for i, cfg in enumerate(cfgs)]
            inputs = [seeded_input((1, 3, c.image_size, c.image_size)) for c in cfgs]
            samples = time_interleaved(paths, inputs, calls=turns, warmup=3, block=block, settle=1)
    except OfaDeployError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    medians, ratios = window_spreads(samples, block, window)
    names = [c.id for c in cfgs]
    device = host_identity().folder_name()
    alone = 100 * np.log(medians).std(axis=0)
    shared = 100 * np.log(ratios[:, 1:]).std(axis=0)
    lines = [f"{device}: 3 subnets in {turns} turns ({block} timed calls each per turn), {len(medians)} windows of "
             f"{window} turns",
             *(f"  {n}: median {np.median(np.array(s)):.3f} ms; its window medians scatter {a:.1f} % (sd of log)"
               for n, s, a in zip(names, samples, alone)),
             *(f"  {n} / {names[0]} in turns: {np.median(ratios[:, i + 1]):.3f}, scattering {v:.1f} % over windows"
               for i, (n, v) in enumerate(zip(names[1:], shared))),
             f"drift a subnet timed alone carries: {alone.mean():.1f} %; left in turns: {shared.mean():.1f} %"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"timing_in_turns_{device}.png"
    plot(png, medians, ratios, names, window, f"{device}: window medians alone vs ratios in turns "
                                               f"({window} turns a window)")
    click.echo("\n".join(lines + [f"plot: {png}"]))


if __name__ == "__main__":
    main()
