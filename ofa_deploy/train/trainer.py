"""The progressive-shrinking training loop: resumable, distributed, with knowledge distillation.

One call of :func:`train` runs (or resumes) every phase of a schedule. After each epoch it writes
``last.pth`` atomically: the supernet in the official format plus the trainer state (phase,
epochs done, optimizer, history). Every random draw of an epoch (data order, resolution per batch,
sampled subnets, augmentation) comes from a generator seeded by (seed, phase, epoch), so a killed
run resumed from ``last.pth`` reaches the same weights as an uninterrupted one.

Distributed: started with ``torchrun --nproc_per_node N -m ofa_deploy.cli train ...`` each process
trains on its shard of every batch order, all processes sample the same subnets, and gradients are
averaged with ``all_reduce`` before each step (what DDP does, but robust to the parameters a
sampled subnet leaves unused). gloo on CPU, nccl on GPUs.

Device: ``device="auto"`` trains on this process's GPU (``cuda:LOCAL_RANK``) when torch sees one,
else on the CPU. Images are kept as uint8 in host memory and augmented there; each batch is then
moved to the device. Checkpoints are always written as contiguous CPU tensors, so a run started on
a GPU resumes on a CPU and the reverse (bit-identical resumption holds on the same device kind;
cuDNN may pick non-deterministic kernels).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ofa_deploy.atomic import atomic_path, write_text
from ofa_deploy.data import MEAN, STD, check_dataset, evaluate, calibration_batches, load_tensors, load_uint8, resize_batch
from ofa_deploy.errors import CheckpointError, OfaDeployError
from ofa_deploy.outputs import OutputFolder
from ofa_deploy.search_space import DEFAULT_SPACE, OFAMobileNetV3, SubnetConfig, get_space, recalibrate_bn, save_supernet
from ofa_deploy.search_space.checkpoint import check_state_dict, load_torch_file
from ofa_deploy.search_space.static import MobileNetV3
from ofa_deploy.torch_device import resolve_device

from .schedule import Phase, get_schedule

log = logging.getLogger(__name__)


TRAIN_FILES = ("last.pth", "teacher.pth", "supernet.pth", "curves.csv", "curves.png")  # what a run folder holds


@dataclass(frozen=True)
class TrainConfig:
    data: str  # ImageFolder root with train/ and val/
    out_dir: str  # TRAIN_FILES
    space: str = DEFAULT_SPACE
    schedule: str = "tiny"  # paper | short | tiny
    phases: tuple[Phase, ...] = ()  # explicit phases (overrides ``schedule``)
    batch_size: int = 64  # per process
    resolutions: tuple[int, ...] = ()  # empty: the space's 128..224 step 4
    val_resolution: int = 160
    val_limit: int | None = 500  # validation images per evaluation (seeded subset)
    calib_images: int = 256  # images for BN recalibration before each validation
    weight_decay: float = 3e-5  # not applied to BN and biases (as OFA)
    momentum: float = 0.9
    label_smoothing: float = 0.1
    kd_ratio: float = 1.0  # weight of the soft cross-entropy to the teacher
    seed: int = 0
    device: str = "auto"  # auto (this process's GPU when there is one, else cpu) | cpu | cuda
    channels_last: bool = True  # NHWC tensors: 1.6-2.3x faster steps on a 2-core CPU (bench/train_throughput.py)
    limit_train: int | None = None  # seeded subset of train/ (smoke tests)
    max_steps_per_epoch: int | None = None
    # Fields that must match to resume a run in the same out_dir:
    resume_keys: tuple[str, ...] = field(default=("space", "batch_size", "resolutions", "seed", "limit_train",
                                                  "max_steps_per_epoch", "kd_ratio"), repr=False)

    def schedule_phases(self) -> tuple[Phase, ...]:
        return self.phases or get_schedule(self.schedule)


@dataclass
class Progress:
    phase: int = 0
    epochs_done: int = 0  # within the phase
    history: list[dict[str, Any]] = field(default_factory=list)


# -- distributed helpers ------------------------------------------------------------------------
def _dist(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def _average_gradients(net: torch.nn.Module, world: int) -> None:
    for p in net.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(world)


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


# -- pieces of a step -----------------------------------------------------------------------------
def augment(images: torch.Tensor, image_size: int, rng: np.random.Generator) -> torch.Tensor:
    """uint8 batch -> float batch: random square crop (35-100 % of the side), flips, resize, normalise."""
    side = images.shape[-1]
    crop = max(8, int(side * math.sqrt(rng.uniform(0.35, 1.0))))
    y0, x0 = (int(v) for v in rng.integers(0, side - crop + 1, 2))
    x = images[..., y0:y0 + crop, x0:x0 + crop].float().div_(255.0)
    flip = torch.from_numpy(rng.random(len(x)) < 0.5)
    x[flip] = x[flip].flip(-1)
    return (resize_batch(x, image_size) - MEAN) / STD


def _optimizer(net: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in net.named_parameters() if p.ndim > 1 and "matrix" not in n]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1 or "matrix" in n]
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=0.0, momentum=cfg.momentum, nesterov=True)


def _cosine(peak: float, step: int, total: int) -> float:
    return 0.5 * peak * (1 + math.cos(math.pi * step / max(1, total)))


# -- validation ---------------------------------------------------------------------------------
def validate(net: OFAMobileNetV3, phase: Phase, cfg: TrainConfig, val: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Top-1 of the phase's smallest and largest subnet, each after BN recalibration."""
    calib = calibration_batches(cfg.data, cfg.val_resolution, cfg.calib_images, seed=cfg.seed)
    device = next(net.parameters()).device
    results = {}
    for name, pick in (("min", min), ("max", max)):
        sub = SubnetConfig.uniform(pick(phase.kernels), pick(phase.expands), pick(phase.depths), cfg.val_resolution, cfg.space)
        static = net.extract(sub).to(device)
        recalibrate_bn(static, calib)
        results[f"val_acc_{name}"] = evaluate(static, *val)
    net.train()
    return results


# -- checkpoints -----------------------------------------------------------------------------------
def _save(path: Path, net: OFAMobileNetV3, optimizer: torch.optim.Optimizer, progress: Progress,
          cfg: TrainConfig, classes: tuple[str, ...]) -> None:
    trainer = {"phase": progress.phase, "epochs_done": progress.epochs_done, "optimizer": optimizer.state_dict(),
               "history": progress.history, "config": {k: getattr(cfg, k) for k in cfg.resume_keys},
               "phases": [asdict(p) for p in cfg.schedule_phases()]}
    save_supernet(net, path, classes=list(classes), trainer=trainer)


def settings_mismatch(saved: dict[str, Any], cfg: TrainConfig) -> tuple[str, Any, Any] | None:
    """The first of ``cfg.resume_keys`` whose value recorded in a checkpoint (``saved``) differs from
    ``cfg``'s, as (key, was, now); None when the run was made with the same settings."""
    for key in cfg.resume_keys:
        now = getattr(cfg, key)
        if key not in saved:
            return key, None, now
        was = type(now)(saved[key]) if isinstance(now, tuple) else saved[key]
        if was != now:
            return key, was, now
    return None


def _is_run_checkpoint(obj: Any) -> bool:
    trainer = obj.get("trainer") if isinstance(obj, dict) else None
    return (isinstance(trainer, dict) and isinstance(trainer.get("config"), dict)
            and isinstance(obj.get("state_dict"), dict)
            and all(k in trainer for k in ("phase", "epochs_done", "optimizer", "history", "phases")))


def is_run_folder(folder: Path) -> bool:
    """True for a run folder of train from before output manifests: its last.pth is a run's checkpoint."""
    try:
        return (folder / "last.pth").is_file() and _is_run_checkpoint(load_torch_file(folder / "last.pth"))
    except OfaDeployError:
        return False


def _resume(path: Path, net: OFAMobileNetV3, cfg: TrainConfig, classes: tuple[str, ...]) -> tuple[Progress, dict | None]:
    """Load ``last.pth`` if present; refuse one written with other settings or data."""
    if not path.is_file():
        return Progress(), None
    obj = load_torch_file(path)
    if not _is_run_checkpoint(obj):
        raise CheckpointError(f"{path}: not the checkpoint of a training run (no trainer state); use another -o")
    if obj.get("space") != cfg.space or tuple(obj.get("classes", ())) != classes:
        raise CheckpointError(f"{path}: run in this directory is for space {obj.get('space')!r} with "
                              f"{len(obj.get('classes', ()))} classes, not {cfg.space!r} with {len(classes)}; use another -o")
    mismatch = settings_mismatch(obj["trainer"]["config"], cfg)
    if mismatch is not None:
        key, was, now = mismatch
        raise OfaDeployError(f"{path}: cannot resume: '{key}' was {was!r}, now {now!r} (same settings or another -o)")
    if obj["trainer"]["phases"] != [asdict(p) for p in cfg.schedule_phases()]:
        raise OfaDeployError(f"{path}: cannot resume: the run used another schedule (same --schedule or another -o)")
    check_state_dict(net, obj["state_dict"], str(path))
    net.load_state_dict(obj["state_dict"])
    t = obj["trainer"]
    log.info("resuming %s: phase %d, %d epochs done", path, t["phase"], t["epochs_done"])
    return Progress(t["phase"], t["epochs_done"], list(t["history"])), t["optimizer"]


def _teacher(out: Path, net: OFAMobileNetV3, space: str) -> MobileNetV3:
    """The frozen largest network: extracted once after the full phase, then reloaded."""
    path = out / "teacher.pth"
    teacher = MobileNetV3(SubnetConfig.max(space), net.n_classes)
    if path.is_file():
        teacher.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        teacher.load_state_dict(net.extract(SubnetConfig.max(space)).state_dict())
        with atomic_path(path) as tmp:
            torch.save(teacher.state_dict(), tmp)
    net.train()
    return teacher.eval().requires_grad_(False)


# -- the loop ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path  # supernet.pth when finished, last.pth when stopped early
    supernet: OFAMobileNetV3
    history: list[dict[str, Any]]
    finished: bool


def train(cfg: TrainConfig, stop_after_epochs: int | None = None) -> TrainResult:
    """Run (or resume) progressive shrinking to the end of the schedule.

    ``stop_after_epochs`` ends the call after that many epochs of this call (tests use it to
    simulate a kill between two checkpoints).
    """
    from tqdm import tqdm

    device = resolve_device(cfg.device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    rank, world = _dist(device)
    classes = check_dataset(cfg.data)
    space = get_space(cfg.space)
    phases = cfg.schedule_phases()
    resolutions = cfg.resolutions or space.resolution_choices
    out = Path(cfg.out_dir)
    if rank == 0:  # the output rule (ofa_deploy/outputs.py): a new or empty folder, or an earlier run of train
        OutputFolder(out, "train", TRAIN_FILES, recognise=is_run_folder).claim()
    else:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    net = OFAMobileNetV3(space, n_classes=len(classes)).train()
    progress, opt_state = _resume(out / "last.pth", net, cfg, classes)
    net = net.to(device, memory_format=memory_format)
    images, labels = load_uint8(cfg.data, "train", cfg.limit_train, cfg.seed)
    val = load_tensors(cfg.data, "val", cfg.val_resolution, cfg.val_limit, cfg.seed) if rank == 0 else None
    shard = len(images) // world
    steps = shard // cfg.batch_size if cfg.max_steps_per_epoch is None else min(shard // cfg.batch_size, cfg.max_steps_per_epoch)
    if steps == 0:
        raise OfaDeployError(f"{cfg.data}: {len(images)} training images are fewer than one batch of {cfg.batch_size} x {world} processes")
    run_epochs = 0
    for phase_idx in range(progress.phase, len(phases)):
        phase = phases[phase_idx]
        if progress.epochs_done == 0 and phase.sort_channels:
            net.sort_channels()
        teacher = _teacher(out, net, cfg.space).to(device, memory_format=memory_format) if phase.distill else None
        optimizer = _optimizer(net, cfg)
        if opt_state is not None and progress.epochs_done > 0:
            optimizer.load_state_dict(opt_state)
        opt_state = None
        peak_lr = phase.lr * cfg.batch_size * world / 256
        for epoch in range(progress.epochs_done, phase.epochs):
            if stop_after_epochs is not None and run_epochs >= stop_after_epochs:
                return TrainResult(out / "last.pth", net.to("cpu", memory_format=torch.contiguous_format),
                                   progress.history, finished=False)
            rng = np.random.default_rng([cfg.seed, phase_idx, epoch])
            torch.manual_seed(int(rng.integers(2**31)))
            order = rng.permutation(len(images))[: shard * world]
            mine = order[rank::world]
            t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
            bar = tqdm(range(steps), desc=f"{phase.name} {epoch + 1}/{phase.epochs}", disable=rank != 0, leave=False)
            for step in bar:
                idx = torch.from_numpy(mine[step * cfg.batch_size:(step + 1) * cfg.batch_size])
                res = int(rng.choice(resolutions))
                x = augment(images[idx], res, rng).to(device, memory_format=memory_format, non_blocking=True)
                y = labels[idx].to(device, non_blocking=True)
                for group in optimizer.param_groups:
                    group["lr"] = _cosine(peak_lr, epoch * steps + step, phase.epochs * steps)
                optimizer.zero_grad(set_to_none=True)
                soft = F.softmax(teacher(x), 1) if teacher is not None else None
                for k in range(phase.subnets_per_step):
                    net.set_active_subnet(SubnetConfig.sample(rng, cfg.space, kernels=phase.kernels,
                                                              expands=phase.expands, depths=phase.depths, image_size=res))
                    logits = net(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                    if soft is not None:
                        loss = loss + cfg.kd_ratio * torch.sum(-soft * F.log_softmax(logits, 1), 1).mean()
                    loss.backward()
                    if k == 0:
                        loss_sum += float(loss.detach()) * len(y)
                        correct += int((logits.argmax(1) == y).sum())
                        seen += len(y)
                if world > 1:
                    _average_gradients(net, world)
                optimizer.step()
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", res=res)
            bar.close()
            elapsed = time.perf_counter() - t0
            progress.epochs_done = epoch + 1
            if rank == 0:
                row = {"phase": phase.name, "epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                       "lr": peak_lr, "images_per_s": seen * world * phase.subnets_per_step / elapsed, "seconds": elapsed}
                row |= validate(net, phase, cfg, val)
                progress.history.append(row)
                log.info("%s epoch %d/%d: loss %.3f, train acc %.3f, val acc min/max %.3f/%.3f, %.1f img/s",
                         phase.name, epoch + 1, phase.epochs, row["train_loss"], row["train_acc"], row["val_acc_min"],
                         row["val_acc_max"], row["images_per_s"])
                _save(out / "last.pth", net, optimizer, progress, cfg, classes)
                write_curves(out, progress.history)
            _barrier(world)
            run_epochs += 1
        if phase_idx == 0 and not phase.distill and rank == 0:
            _teacher(out, net, cfg.space)  # freeze the largest network now, while it is the full phase's result
        progress.phase, progress.epochs_done = phase_idx + 1, 0
    final = out / "supernet.pth"
    net = net.to("cpu", memory_format=torch.contiguous_format)  # the same module a load of supernet.pth gives
    if rank == 0:
        save_supernet(net, final, classes=list(classes), schedule=cfg.schedule, history=progress.history)
    _barrier(world)
    return TrainResult(final, net, progress.history, finished=True)


def write_curves(out: Path, history: list[dict[str, Any]]) -> None:
    """curves.csv and curves.png (loss and validation accuracy per epoch, phases shaded)."""
    import csv
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text(out / "curves.csv", buf.getvalue())
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    xs = np.arange(1, len(history) + 1)
    ax1.plot(xs, [h["train_loss"] for h in history], "o-")
    ax1.set(xlabel="epoch (all phases)", ylabel="train loss")
    ax2.plot(xs, [h["val_acc_max"] for h in history], "o-", label="largest subnet of phase")
    ax2.plot(xs, [h["val_acc_min"] for h in history], "s-", label="smallest subnet of phase")
    ax2.set(xlabel="epoch (all phases)", ylabel="val top-1 (BN recalibrated)")
    ax2.legend(fontsize=8)
    names = [h["phase"] for h in history]
    for ax in (ax1, ax2):
        for i, name in enumerate(names):
            if i == 0 or names[i - 1] != name:
                ax.axvline(i + 0.5, color="grey", lw=0.5)
                ax.text(i + 0.6, ax.get_ylim()[1], name, fontsize=7, va="top", rotation=90)
    fig.tight_layout()
    with atomic_path(out / "curves.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
