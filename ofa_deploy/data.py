"""Image data: ImageFolder-layout datasets and the built-in demo dataset.

A dataset is a folder with ``train/`` and ``val/``, each holding one folder per class of images
(the ImageNet layout; torchvision is not needed). Images are decoded once to uint8 tensors at a
fixed *base size*; each batch is then resized on the fly to the resolution the current subnet uses,
which is how OFA trains with a random resolution per batch.

The demo dataset is generated here (seeded, nothing downloaded): 10 classes of shapes drawn with
random position, size, colour, rotation, texture and clutter. It is hard enough that a larger
subnet scores visibly higher than a small one after a short training run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import write_json
from .errors import OfaDeployError
from .outputs import OutputFolder

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet statistics: the usual
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)  # preprocessing of deployed CNNs


@dataclass(frozen=True)
class FolderIndex:
    """Files and labels of one split; classes are the sorted folder names."""

    classes: tuple[str, ...]
    files: tuple[str, ...]
    labels: tuple[int, ...]


def index_split(root: str | os.PathLike[str], split: str) -> FolderIndex:
    """List ``root/split/<class>/<image>``; raise a clear error for an unusable folder."""
    base = Path(root) / split
    if not base.is_dir():
        raise OfaDeployError(f"{root}: no '{split}/' folder (expected {root}/train/<class>/*.png and {root}/val/<class>/*.png)")
    classes = tuple(sorted(d.name for d in base.iterdir() if d.is_dir()))
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for f in sorted((base / name).iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(str(f))
                labels.append(label)
    if not files:
        raise OfaDeployError(f"{base}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)}) in class folders")
    return FolderIndex(classes, tuple(files), tuple(labels))


def check_dataset(root: str | os.PathLike[str]) -> tuple[str, ...]:
    """Validate a train/val dataset and return its class names."""
    train, val = index_split(root, "train"), index_split(root, "val")
    if train.classes != val.classes:
        raise OfaDeployError(
            f"{root}: train/ has {len(train.classes)} classes but val/ has {len(val.classes)} "
            f"(class folders must match; first difference: {sorted(set(train.classes) ^ set(val.classes))[:1]})"
        )
    return train.classes


def _decode(path: str, base_size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (base_size, base_size):
            img = img.resize((base_size, base_size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


@functools.lru_cache(maxsize=8)
def _load_uint8(root: str, split: str, base_size: int, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    index = index_split(root, split)
    order = np.arange(len(index.files))
    if limit is not None and limit < len(order):
        order = np.sort(np.random.default_rng(seed).choice(order, limit, replace=False))
    images = np.stack([_decode(index.files[i], base_size) for i in order])
    labels = torch.tensor([index.labels[i] for i in order], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


def base_size_of(root: str | os.PathLike[str]) -> int:
    """Side of the first training image: demo images are stored small and upsampled per batch."""
    from PIL import Image

    with Image.open(index_split(root, "train").files[0]) as img:
        return max(img.size)


def to_float(images_uint8: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 NCHW -> normalised float32 NCHW at ``image_size`` (the model's preprocessing)."""
    x = images_uint8.float().div_(255.0)
    x = resize_batch(x, image_size)
    return (x - MEAN) / STD


def resize_batch(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bilinear resize of a float batch to ``image_size`` (no-op when already that size)."""
    if x.shape[-1] == image_size and x.shape[-2] == image_size:
        return x
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)


def load_uint8(root: str | os.PathLike[str], split: str, limit: int | None = None, seed: int = 0,
               base_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All (or a seeded subset of ``limit``) images of a split as uint8 NCHW at the base size, cached."""
    size = base_size or base_size_of(root)
    return _load_uint8(str(root), split, size, limit, seed)


def load_tensors(root: str | os.PathLike[str], split: str, image_size: int, limit: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float images at ``image_size`` and int64 labels, in memory (small sets, subsets)."""
    images, labels = load_uint8(root, split, limit, seed)
    return to_float(images, image_size), labels


def calibration_batches(root: str | os.PathLike[str], image_size: int, n_images: int = 256, batch_size: int = 64,
                        seed: int = 0) -> list[torch.Tensor]:
    """A seeded subset of train/ for :func:`recalibrate_bn`, as batches at ``image_size``."""
    images, _ = load_uint8(root, "train", n_images, seed)
    x = to_float(images, image_size)
    return list(torch.split(x, batch_size))


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (put in eval mode, on any device) on in-memory CPU tensors."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for xb, yb in zip(torch.split(images, batch_size), torch.split(labels, batch_size)):
        correct += int((model(xb.to(device)).argmax(1).cpu() == yb).sum())
    return correct / len(labels)


# -- the demo dataset ------------------------------------------------------------------------------
DEMO_CLASSES = ("circle", "square", "triangle", "cross", "ring", "bar", "diamond", "star", "checker", "dots")


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one shape centred at 0 with radius ~1 in rotated coordinates."""
    r = np.hypot(yy, xx)
    theta = np.arctan2(yy, xx)
    if kind == "circle":
        return r < 1.0
    if kind == "square":
        return np.maximum(abs(xx), abs(yy)) < 0.85
    if kind == "triangle":
        return (yy < 0.7) & (yy > -0.9 + 1.6 * abs(xx) * 1.2)
    if kind == "cross":
        return ((abs(xx) < 0.3) | (abs(yy) < 0.3)) & (np.maximum(abs(xx), abs(yy)) < 1.0)
    if kind == "ring":
        return (r < 1.0) & (r > 0.6)
    if kind == "bar":
        return (abs(yy) < 0.35) & (abs(xx) < 1.1)
    if kind == "diamond":
        return abs(xx) + abs(yy) < 1.0
    if kind == "star":
        return r < 0.55 + 0.45 * np.cos(5 * theta) ** 2
    if kind == "checker":
        return (np.maximum(abs(xx), abs(yy)) < 0.95) & ((np.floor(xx * 2.5) + np.floor(yy * 2.5)) % 2 == 0)
    if kind == "dots":
        return (np.hypot(np.mod(xx * 2 + 10, 1) - 0.5, np.mod(yy * 2 + 10, 1) - 0.5) < 0.25) & (r < 1.1)
    raise ValueError(kind)


def render_demo_image(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One HxWx3 uint8 image of class ``label``: shape + random pose/colour + clutter + noise."""
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    bg = rng.uniform(0, 1, 3)
    img = np.ones((size, size, 3)) * bg
    img += 0.25 * np.sin(xx[..., None] * rng.uniform(2, 9) + yy[..., None] * rng.uniform(2, 9) + rng.uniform(0, 6, 3))
    for _ in range(int(rng.integers(1, 4))):  # distractor blobs of random colour
        cy, cx, rad = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.08, 0.3)
        img[np.hypot(yy - cy, xx - cx) < rad] = rng.uniform(0, 1, 3)
    scale, angle = rng.uniform(0.35, 0.7), rng.uniform(-0.35, 0.35)  # +-20 deg: a square must not become a diamond
    cy, cx = rng.uniform(-0.35, 0.35, 2)
    c, s = np.cos(angle), np.sin(angle)
    v, u = ((yy - cy) * c - (xx - cx) * s) / scale, ((yy - cy) * s + (xx - cx) * c) / scale
    colour = np.clip(1 - bg + rng.normal(0, 0.25, 3), 0, 1)  # contrasting, but not a class cue
    img[_shape_mask(DEMO_CLASSES[label], v, u, rng)] = colour
    img += rng.normal(0, 0.08, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_demo_dataset(root: str | os.PathLike[str], seed: int = 0, train_per_class: int = 400,
                      val_per_class: int = 100, size: int = 64) -> Path:
    """Write the demo dataset to ``root`` (idempotent: an existing complete one is kept)."""
    from PIL import Image

    out = Path(root)
    stamp = out / "demo_dataset.json"
    spec = {"seed": seed, "train_per_class": train_per_class, "val_per_class": val_per_class, "size": size,
            "classes": list(DEMO_CLASSES)}
    import json

    # An unusable path (a name too long, a NUL byte) is no dataset yet: OutputFolder below says why in one line.
    with contextlib.suppress(OSError, ValueError):
        if stamp.is_file() and json.loads(stamp.read_text()) == spec:
            return out
    # The output rule (ofa_deploy/outputs.py): a new or empty folder, or a demo dataset (its stamp).
    OutputFolder(out, "demo-data", ("train", "val", stamp.name),
                 recognise=lambda folder: (folder / stamp.name).is_file()).claim()
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(DEMO_CLASSES):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(render_demo_image(label, rng, size)).save(folder / f"{i:05d}.png")
    write_json(stamp, spec)  # written last: its presence means the dataset is complete
    log.info("demo dataset written to %s (%d classes, %d train / %d val images per class)", out,
             len(DEMO_CLASSES), train_per_class, val_per_class)
    return out
