"""Does progressive shrinking work? Subnets taken from the shrunk supernet vs the same subnets trained alone.

The paper's claim (Cai et al. 2020, Fig. 7): a subnet taken from a progressively shrunk supernet is
at least as accurate as the same architecture trained from scratch. This script trains the min,
mid and max subnets from scratch with the project's own trainer (one phase whose only active
choice is that subnet, no distillation, same data, batch, resolutions and seed as the supernet
run) for two budgets: the epochs of the PS full phase (what one network's training costs, the
paper's from-scratch baseline) and every epoch of the PS schedule (equal compute per subnet); the
largest subnet's run for the full phase's epochs is the PS full phase itself, so that one is reused.
It then evaluates every version of each subnet the same way (BN recalibrated, whole val split) and
rewrites the matching section of BENCHMARKS.md. Runs resume (each scratch run keeps its last.pth).

    python bench/ps_vs_scratch.py --supernet runs/demo/supernet.pth --data demo \\
        --resolutions 128,160 --limit-train 1200 --eval-resolution 160
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from ofa_deploy.data import calibration_batches, evaluate, load_tensors
from ofa_deploy.search_space import MobileNetV3, SubnetConfig, load_supernet, recalibrate_bn
from ofa_deploy.search_space.checkpoint import read_state_dict
from ofa_deploy.train import TrainConfig, train
from ofa_deploy.train.trainer import settings_mismatch
from ofa_deploy.train.schedule import Phase, get_schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import UNIFORM_SUBNETS, publish  # noqa: E402

log = logging.getLogger("ps_vs_scratch")
SCRATCH_LR = 0.10  # the "full" phase's peak learning rate: what the largest network is trained with


def accuracy(static: torch.nn.Module, image_size: int, data: str, val_limit: int | None) -> float:
    """Top-1 of a static subnet after BN recalibration, on the val split."""
    images, labels = load_tensors(data, "val", image_size, limit=val_limit)
    with torch.no_grad():
        recalibrate_bn(static, calibration_batches(data, image_size))
        return evaluate(static, images, labels)


def ps_full_phase(supernet: str) -> tuple[dict[str, Any], dict[str, Any], float] | None:
    """The PS run's recorded settings, its full phase's record and that phase's mean img/s, read once
    from ``RUN/last.pth`` (it holds the optimizer state too, ~60 MB); None without ``RUN/teacher.pth``."""
    run = Path(supernet).parent
    if not (run / "teacher.pth").is_file() or not (run / "last.pth").is_file():
        return None
    trainer = read_state_dict(run / "last.pth")[1].get("trainer") or {}
    if not trainer.get("phases"):
        return None
    full = trainer["phases"][0]
    img_s = [h["images_per_s"] for h in trainer.get("history", []) if h.get("phase") == full["name"]]
    return trainer.get("config") or {}, full, sum(img_s) / max(1, len(img_s))


def is_full_phase(ps: tuple[dict[str, Any], dict[str, Any], float] | None, cfg: TrainConfig) -> bool:
    """True when scratch run ``cfg`` *is* the PS run's full phase, so ``RUN/teacher.pth`` is its result.

    The trainer seeds every epoch from (seed, phase index, epoch) and a phase's name changes nothing,
    so a one-phase run whose phase record and settings (the trainer's own resume check) match the
    full phase's is the same run, batch for batch (checked on the demo run: four epochs of a bench run
    had the PS full phase's training losses to all 16 digits; and by the test
    ``test_full_phase_is_the_largest_network_trained_alone``). Reusing it saves training the largest
    network a second time: 20 of the bench's 45 minutes on a 2-core CPU. ``--data`` must be the data the run trained on, as for the rest of
    this bench.
    """
    if ps is None:
        return False
    config, full, _ = ps
    return settings_mismatch(config, cfg) is None and asdict(replace(cfg.phases[0], name=full["name"])) == full


def scratch_budgets(spec: str, phases: tuple[Phase, ...]) -> tuple[int, ...]:
    """Scratch epochs to compare with: ``full`` (the PS full phase's, what training one network costs),
    ``all`` (every epoch of the PS schedule: equal compute per subnet) or integers."""
    named = {"full": phases[0].epochs, "all": sum(p.epochs for p in phases)}
    bad = [b for b in spec.split(",") if b not in named and not b.isdigit()]
    if bad:
        raise SystemExit(f"--epochs: {bad[0]!r} is not allowed; allowed: full, all or a number of epochs")
    return tuple(dict.fromkeys(named[b] if b in named else int(b) for b in spec.split(",")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supernet", required=True, help="The progressively shrunk supernet (supernet.pth).")
    parser.add_argument("--data", required=True, help="ImageFolder root, or 'demo'.")
    parser.add_argument("--schedule", default="tiny", help="The preset the supernet was trained with.")
    parser.add_argument("--epochs", default="full,all",
                        help="Scratch budgets, comma-separated: 'full' (epochs of the PS full phase, the paper's "
                             "baseline), 'all' (all epochs of the PS schedule) or numbers.")
    parser.add_argument("--resolutions", default="128,144,160")
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-resolution", type=int, default=144)
    parser.add_argument("--val-limit", type=int, default=None, help="Val images (default: all).")
    parser.add_argument("--out", default="runs/scratch", help="Directory of the scratch runs.")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (the trainer's --device).")
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from ofa_deploy.cli.train import resolve_data

    data = resolve_data(args.data)
    phases = get_schedule(args.schedule)
    ps_epochs = sum(p.epochs for p in phases)
    budgets = scratch_budgets(args.epochs, phases)
    resolutions = tuple(int(r) for r in args.resolutions.split(","))
    meta = read_state_dict(args.supernet)[1]
    space, history = meta.get("space"), meta.get("history") or []
    ps_net = load_supernet(args.supernet)
    ps_img_s = [h["images_per_s"] for h in history if "images_per_s" in h]

    ps = ps_full_phase(args.supernet)
    rows, reused_note = [], ""
    for name, (k, e, d) in UNIFORM_SUBNETS.items():
        cfg = SubnetConfig.uniform(k, e, d, args.eval_resolution, space)
        ps_acc = accuracy(ps_net.extract(cfg), cfg.image_size, data, args.val_limit)
        scratch = []
        for epochs in budgets:
            phase = Phase(f"scratch-k{k}e{e}d{d}", epochs, SCRATCH_LR, (k,), (e,), (d,), distill=False)
            scratch_cfg = TrainConfig(data=data, out_dir=str(Path(args.out) / f"{phase.name}-{epochs}ep"),
                                      space=space, phases=(phase,), batch_size=args.batch_size,
                                      resolutions=resolutions, val_resolution=args.eval_resolution,
                                      limit_train=args.limit_train, seed=args.seed, device=args.device)
            if is_full_phase(ps, scratch_cfg):
                teacher = Path(args.supernet).parent / "teacher.pth"
                log.info("%s, %d epochs from scratch: reusing %s (the PS full phase is that run)", name, epochs, teacher)
                static = MobileNetV3(cfg, ps_net.n_classes)
                static.load_state_dict(torch.load(teacher, map_location="cpu", weights_only=True))
                img_s = ps[2]
                reused_note = (f" The {name.split()[0]} subnet's {epochs}-epoch scratch run is the PS run's own full "
                               f"phase (the same run, batch for batch: `teacher.pth`), not trained again.")
            else:
                run = train(scratch_cfg)
                static = run.supernet.extract(cfg)
                img_s = sum(h["images_per_s"] for h in run.history) / len(run.history)
            scratch.append((accuracy(static, cfg.image_size, data, args.val_limit), img_s))
            log.info("%s: PS %.3f, scratch (%d epochs) %.3f", name, ps_acc, epochs, scratch[-1][0])
        rows.append((name, ps_acc, scratch))

    header = f"| subnet @{args.eval_resolution} | from the PS supernet |"
    header += "".join(f" scratch, {n} epochs | PS - scratch |" for n in budgets) + " scratch training img/s |"
    lines = [header, "|---" * (3 + 2 * len(budgets)) + "|"]
    for name, ps_acc, scratch in rows:
        cells = "".join(f" {100 * acc:.1f} % | {100 * (ps_acc - acc):+.1f} pt |" for acc, _ in scratch)
        lines.append(f"| {name} | {100 * ps_acc:.1f} % |{cells} {sum(s for _, s in scratch) / len(scratch):.0f} |")
    full = phases[0].epochs
    meaning = {full: "what training one network costs, the paper's baseline", ps_epochs: "the whole PS budget"}
    why = "; ".join(f"{n}: {meaning[n]}" for n in budgets if n in meaning)
    publish("Progressive shrinking vs training from scratch (demo dataset)", [
        f"Progressive shrinking: `{args.schedule}` schedule, {ps_epochs} epochs over all phases ({full} of them on "
        f"the full network; mean {sum(ps_img_s) / max(1, len(ps_img_s)):.0f} training img/s counted per sampled "
        f"subnet). Each scratch subnet is trained alone with the full phase's recipe (peak learning rate, no "
        f"teacher), same data, batch, resolutions and seed, for {' and for '.join(map(str, budgets))} epochs"
        + (f" ({why})" if why else "") + f". Top-1 on the whole val split after BN recalibration.{reused_note}",
        "\n".join(lines)], write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
