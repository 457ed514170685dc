"""``ofa-deploy train`` and ``ofa-deploy demo-data``."""

from __future__ import annotations

import click

from ofa_deploy.cache import cache_root
from ofa_deploy.errors import OfaDeployError

from .options import FOLDER_RULE, SEED

DEMO_CACHE = cache_root() / "demo_dataset"


def resolve_data(data: str) -> str:
    """``demo`` means the built-in demo dataset (generated into the cache on first use)."""
    if data == "demo":
        from ofa_deploy.data import make_demo_dataset

        return str(make_demo_dataset(DEMO_CACHE))
    return data


@click.command("demo-data")
@click.option("-o", "--output", default=str(DEMO_CACHE), show_default=True, type=click.Path(),
              help="Dataset folder. " + FOLDER_RULE)
@click.option("--seed", default=0, show_default=True, type=SEED)
def demo_data(output: str, seed: int) -> None:
    """Generate the built-in demo dataset (10 synthetic shape classes, ImageFolder layout).

    \b
    Example:
      ofa-deploy demo-data -o data/demo
    """
    from ofa_deploy.data import make_demo_dataset

    click.echo(make_demo_dataset(output, seed=seed))


@click.command()
@click.option("--data", required=True, help="ImageFolder root with train/ and val/, or 'demo'.")
@click.option("-o", "--output", default="runs/supernet", show_default=True, type=click.Path(),
              help="Run folder: last.pth (resume), teacher.pth, supernet.pth, curves.csv/png. " + FOLDER_RULE)
@click.option("--schedule", type=click.Choice(["paper", "short", "tiny"]), default="tiny", show_default=True)
@click.option("--space", default="ofa_mbv3_d234_e346_k357_w1.0", show_default=True)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Per process.")
@click.option("--resolutions", default="", help="Comma-separated training resolutions (default: the space's 128..224).")
@click.option("--val-resolution", default=160, show_default=True, type=int)
@click.option("--limit-train", default=None, type=click.IntRange(min=1),
              help="Train on a seeded subset of this many train/ images (default: all).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: this process's GPU (cuda:LOCAL_RANK) when torch sees one, else the CPU.")
def train(data: str, output: str, schedule: str, space: str, batch_size: int, resolutions: str, val_resolution: int,
          limit_train: int | None, seed: int, device: str) -> None:
    """Train an OFA supernet by progressive shrinking with knowledge distillation.

    Resumes automatically from OUTPUT/last.pth. For several processes or machines, launch with
    torchrun (gloo on CPU, nccl on GPUs); each process takes --batch-size images per step.

    \b
    Example:
      ofa-deploy train --data demo --schedule tiny -o runs/demo
      torchrun --nproc_per_node 2 -m ofa_deploy.cli train --data /data/imagenet --schedule paper -o runs/in1k
    """
    from ofa_deploy.outputs import OutputFolder
    from ofa_deploy.search_space import get_space
    from ofa_deploy.train import TrainConfig
    from ofa_deploy.train import train as run_training
    from ofa_deploy.train.trainer import TRAIN_FILES, is_run_folder

    OutputFolder(output, "train", TRAIN_FILES, recognise=is_run_folder).check()  # before any data is read
    sp = get_space(space)
    try:
        res = tuple(int(r) for r in resolutions.split(",") if r.strip())
    except ValueError:
        raise OfaDeployError(f"--resolutions: {resolutions!r} is not a comma-separated list of integers") from None
    bad = [r for r in res + (val_resolution,) if r not in sp.resolution_choices]
    if bad:
        raise OfaDeployError(f"--resolutions/--val-resolution: {bad[0]} is not allowed; allowed values: 128..224 in steps of 4")
    cfg = TrainConfig(data=resolve_data(data), out_dir=output, space=space, schedule=schedule, batch_size=batch_size,
                      resolutions=res, val_resolution=val_resolution, limit_train=limit_train, seed=seed, device=device)
    result = run_training(cfg)
    click.echo(f"{result.checkpoint}: trained {len(result.history)} epochs "
               f"(val top-1 largest/smallest {result.history[-1]['val_acc_max']:.3f}/{result.history[-1]['val_acc_min']:.3f})")
