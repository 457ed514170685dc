"""Does progressive shrinking work? Subnets taken from the shrunk supernet vs the same subnets trained alone.

The paper's claim (Cai et al. 2020, Fig. 7): a subnet taken from a progressively shrunk supernet is
at least as accurate as the same architecture trained from scratch. This script trains the min,
mid and max subnets from scratch with the project's own trainer (one phase whose only active
choice is that subnet, no distillation, same data, batch, resolutions and seed as the supernet
run) for the same number of epochs as the whole progressive-shrinking schedule, then evaluates both
versions of each subnet the same way (BN recalibrated, full val split) and rewrites the matching
section of BENCHMARKS.md. Runs resume (each scratch run keeps its own last.pth).

    python bench/ps_vs_scratch.py --supernet runs/demo/supernet.pth --data demo \\
        --resolutions 128,144,160 --limit-train 2000 --eval-resolution 144
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from ofa_deploy.data import calibration_batches, evaluate, load_tensors
from ofa_deploy.search_space import SubnetConfig, load_supernet, recalibrate_bn
from ofa_deploy.search_space.checkpoint import read_state_dict
from ofa_deploy.train import TrainConfig, train
from ofa_deploy.train.schedule import Phase, get_schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import update_benchmarks_md  # noqa: E402

log = logging.getLogger("ps_vs_scratch")
SUBNETS = {"min (k3 e3 d2)": (3, 3, 2), "mid (k5 e4 d3)": (5, 4, 3), "max (k7 e6 d4)": (7, 6, 4)}
SCRATCH_LR = 0.10  # the "full" phase's peak learning rate: what the largest network is trained with


def accuracy(net, cfg: SubnetConfig, data: str, val_limit: int | None) -> float:
    """Top-1 of ``cfg`` taken from ``net`` after BN recalibration, on the val split."""
    images, labels = load_tensors(data, "val", cfg.image_size, limit=val_limit)
    with torch.no_grad():
        static = net.extract(cfg)
        recalibrate_bn(static, calibration_batches(data, cfg.image_size))
        return evaluate(static, images, labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supernet", required=True, help="The progressively shrunk supernet (supernet.pth).")
    parser.add_argument("--data", required=True, help="ImageFolder root, or 'demo'.")
    parser.add_argument("--schedule", default="tiny", help="The preset the supernet was trained with.")
    parser.add_argument("--epochs", type=int, default=None,
                        help="Scratch epochs per subnet (default: all epochs of the PS schedule).")
    parser.add_argument("--resolutions", default="128,144,160")
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-resolution", type=int, default=144)
    parser.add_argument("--val-limit", type=int, default=None, help="Val images (default: all).")
    parser.add_argument("--out", default="runs/scratch", help="Directory of the scratch runs.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from ofa_deploy.cli_train import resolve_data

    data = resolve_data(args.data)
    ps_epochs = sum(p.epochs for p in get_schedule(args.schedule))
    epochs = args.epochs or ps_epochs
    resolutions = tuple(int(r) for r in args.resolutions.split(","))
    meta = read_state_dict(args.supernet)[1]
    space, history = meta.get("space"), meta.get("history") or []
    ps_net = load_supernet(args.supernet)
    ps_img_s = [h["images_per_s"] for h in history if "images_per_s" in h]

    rows = []
    for name, (k, e, d) in SUBNETS.items():
        cfg = SubnetConfig.uniform(k, e, d, args.eval_resolution, space)
        phase = Phase(f"scratch-k{k}e{e}d{d}", epochs, SCRATCH_LR, (k,), (e,), (d,), distill=False)
        run = train(TrainConfig(data=data, out_dir=str(Path(args.out) / phase.name), space=space, phases=(phase,),
                                batch_size=args.batch_size, resolutions=resolutions,
                                val_resolution=args.eval_resolution, limit_train=args.limit_train, seed=args.seed))
        scratch_img_s = [h["images_per_s"] for h in run.history]
        ps_acc = accuracy(ps_net, cfg, data, args.val_limit)
        scratch_acc = accuracy(run.supernet, cfg, data, args.val_limit)
        rows.append((name, ps_acc, scratch_acc, sum(scratch_img_s) / len(scratch_img_s)))
        log.info("%s: PS %.3f, scratch %.3f", name, ps_acc, scratch_acc)

    lines = [f"| subnet @{args.eval_resolution} | from the PS supernet | trained from scratch ({epochs} epochs) "
             f"| PS - scratch | scratch training img/s |", "|---|---|---|---|---|"]
    for name, ps_acc, scratch_acc, img_s in rows:
        lines.append(f"| {name} | {100 * ps_acc:.1f} % | {100 * scratch_acc:.1f} % | "
                     f"{100 * (ps_acc - scratch_acc):+.1f} pt | {img_s:.0f} |")
    body = "\n".join([
        "Command: `python bench/ps_vs_scratch.py " + " ".join(sys.argv[1:]) + "`", "",
        f"Progressive shrinking: `{args.schedule}` schedule, {ps_epochs} epochs over all phases "
        f"(mean {sum(ps_img_s) / max(1, len(ps_img_s)):.0f} training img/s counted per sampled subnet). "
        f"Each scratch subnet gets the same {epochs} epochs, same data, batch, resolutions and seed. Top-1 on the "
        "val split after BN recalibration, CPU (2 cores).", "", *lines])
    print(body)
    if not args.no_write:
        update_benchmarks_md("Progressive shrinking vs training from scratch (demo dataset)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
