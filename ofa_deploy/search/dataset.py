"""The accuracy dataset: (subnet, measured top-1) pairs that train the accuracy predictor.

Each subnet is extracted from the supernet, gets its BN statistics re-estimated on training
images (OFA's protocol: shared BN statistics fit no single subnet), and is evaluated on the
validation split. Results go to an append-only JSONL file, one line per subnet, flushed and fsynced:
a kill loses at most the subnet in progress, a half-written last line is dropped on restart, and
a restart skips the subnets already there. The subnets are drawn from a seeded generator, so the
i-th subnet of a run is the same whatever was done before (and ``-n`` can grow on a rerun).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.search_space import OFAMobileNetV3, SubnetConfig, recalibrate_bn
from ofa_deploy.search_space.genes import configs_to_genes
from ofa_deploy.torch_device import resolve_device

log = logging.getLogger(__name__)

FORMAT = "ofa-deploy-acc-dataset"
VERSION = 1


@dataclass(frozen=True)
class AccDatasetConfig:
    """How subnets are drawn and evaluated; everything except ``n_subnets`` must match on resume."""

    n_subnets: int = 1000  # OFA used 16k ImageNet subnets; ~1k fit a small dataset's predictor
    seed: int = 0  # subnet sampling
    val_limit: int | None = None  # validation images per subnet (None: the whole val split)
    calib_images: int = 256  # training images for BN recalibration (OFA: 2,000 on ImageNet)
    calib_batch: int = 64
    data_seed: int = 0  # which images the subsets above are

    def header_key(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("n_subnets")
        return d


def sample_subnets(space: str, n: int, seed: int) -> list[SubnetConfig]:
    """``n`` distinct subnets (by canonical id), prefix-stable in ``n`` for a given seed."""
    rng = np.random.default_rng(seed)
    out: list[SubnetConfig] = []
    seen: set[str] = set()
    for _ in range(50 * n + 100):  # bounded: the space has 1e19 members, duplicates are rare
        if len(out) == n:
            break
        cfg = SubnetConfig.sample(rng, space)
        if cfg.id not in seen:
            seen.add(cfg.id)
            out.append(cfg)
    return out


def _data_api(data_api: ModuleType | Any | None) -> Any:
    if data_api is not None:
        return data_api
    try:
        from ofa_deploy import data
    except ImportError:
        raise OfaDeployError("acc-dataset: the data module (ofa_deploy.data) is not installed") from None
    return data


def read_records(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(header, records) of a dataset file; a truncated last line (killed mid-write) is skipped."""
    p = Path(path)
    if not p.is_file():
        return None, []
    header, records = None, []
    try:
        lines = p.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise OfaDeployError(f"{p}: not an ofa-deploy accuracy dataset (a binary file)") from None
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if header is not None and n == len(lines) - 1:  # the unterminated last line of a killed run
                log.warning("%s: dropping a half-written last line", p)
                continue
            if header is None:
                raise OfaDeployError(f"{p}: not an ofa-deploy accuracy dataset (first line must be its header)") \
                    from None
            raise OfaDeployError(f"{p}: line {n + 1} is not valid JSON") from None
        if header is None:
            if not isinstance(obj, dict) or obj.get("format") != FORMAT:
                raise OfaDeployError(f"{p}: not an ofa-deploy accuracy dataset (first line must be its header)")
            header = obj
        elif not isinstance(obj, dict) or not _is_record(obj):
            raise OfaDeployError(f"{p}: line {n + 1} is not a subnet record ({{index, arch, acc}})")
        else:
            records.append(obj)
    return header, records


def _is_record(obj: dict[str, Any]) -> bool:
    acc = obj.get("acc")
    return (isinstance(obj.get("index"), int) and not isinstance(obj.get("index"), bool)
            and isinstance(obj.get("arch"), dict) and isinstance(acc, (int, float)) and not isinstance(acc, bool)
            and math.isfinite(acc))



def _truncate_partial_line(p: Path) -> None:
    data = p.read_bytes()
    if data and not data.endswith(b"\n"):
        with p.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def build_acc_dataset(supernet: OFAMobileNetV3, data_root: str | os.PathLike[str], out_path: str | os.PathLike[str],
                      config: AccDatasetConfig = AccDatasetConfig(), *, data_api: Any = None,
                      progress: bool | None = None) -> list[dict[str, Any]]:
    """Evaluate ``config.n_subnets`` subnets of ``supernet`` on ``data_root``; resume from ``out_path``."""
    data = _data_api(data_api)
    check = getattr(data, "check_dataset", None)
    if check is not None:
        classes = check(str(data_root))
        if len(classes) != supernet.n_classes:
            raise OfaDeployError(f"{data_root}: dataset has {len(classes)} classes but the supernet has "
                                 f"{supernet.n_classes} (train it on this dataset first)")
    out = Path(out_path)
    header = {"format": FORMAT, "version": VERSION, "space": supernet.space.name, "n_classes": supernet.n_classes,
              "dataset": Path(data_root).resolve().name, **config.header_key()}
    old_header, records = read_records(out)
    if old_header is not None:
        keys = [k for k in header if k != "format"]
        diff = [k for k in keys if old_header.get(k) != header[k]]
        if diff:
            k = diff[0]
            raise OfaDeployError(f"{out}: was built with {k}={old_header.get(k)!r}, not {header[k]!r}; "
                                 f"use the same settings to resume or another output file")
        _truncate_partial_line(out)
    configs = sample_subnets(supernet.space.name, config.n_subnets, config.seed)
    done = {r["index"] for r in records}
    todo = [i for i in range(len(configs)) if i not in done]
    # Sample order, not grouped by resolution: a stopped run is then still a random sample of the
    # space (grouping left a stopped run without its highest resolutions). The images are decoded
    # once (``load_uint8`` caches them); a change of resolution costs a resize, 1-5 s against the
    # 15-80 s of evaluating one subnet on this CPU.
    if not todo:
        log.info("%s: all %d subnets already evaluated", out, len(configs))
        return records
    out.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device("auto")  # a GPU when there is one: evaluation is most of the cost
    cache: dict[int, tuple] = {}
    with out.open("a") as f:
        if old_header is None:
            f.write(json.dumps(header) + "\n")
            f.flush()
            os.fsync(f.fileno())
        bar = tqdm(todo, desc="acc-dataset", file=sys.stderr, leave=False,
                   disable=None if progress is None else not progress)  # None: only on a terminal
        for i in bar:
            cfg = configs[i]
            r = cfg.image_size
            if r not in cache:
                cache.clear()  # one resolution's float tensors at a time bounds memory
                val = data.load_tensors(str(data_root), "val", r, limit=config.val_limit, seed=config.data_seed)
                calib = data.calibration_batches(str(data_root), r, n_images=config.calib_images,
                                                 batch_size=config.calib_batch, seed=config.data_seed)
                cache[r] = (val, calib)
            (images, labels), calib = cache[r]
            t0 = time.perf_counter()
            with torch.no_grad():
                static = supernet.extract(cfg).to(device)
                recalibrate_bn(static, calib)
                acc = float(data.evaluate(static, images, labels))
            rec = {"index": i, "id": cfg.id, "arch": cfg.to_dict(), "acc": acc,
                   "seconds": round(time.perf_counter() - t0, 3)}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a kill now loses nothing already reported
            records.append(rec)
    return records


def load_acc_dataset(path: str | os.PathLike[str]) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(header, gene rows, accuracies) of a dataset file, for predictor training."""
    header, records = read_records(path)
    if header is None:
        raise OfaDeployError(f"{path}: accuracy dataset file not found or empty")
    for key, kind in (("space", str), ("n_classes", int), ("dataset", str)):
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise OfaDeployError(f"{path}: the header's {key!r} is missing or not a {kind.__name__}")
    configs = [SubnetConfig.from_dict(r["arch"], where=f"{path}: record {r.get('index')}") for r in records]
    if not configs:
        raise OfaDeployError(f"{path}: holds no evaluated subnets yet")
    genes = configs_to_genes(configs, header["space"])
    return header, genes, np.array([r["acc"] for r in records], dtype=np.float64)
