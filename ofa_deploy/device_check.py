"""Check a compiled folder on the device it was shipped to: ``ofa-deploy check build/x``.

``compile`` runs where TVM's compiler is; the module often runs elsewhere: a CUDA module built on
a laptop without a GPU ("compiled-only"), an ARM module verified only under qemu. This is the
second half of ``compile``'s verification, on that device: the folder's ``reference.npz`` (the
input ``compile`` fed and PyTorch's logits for it) is run through ``subnet.so`` here and compared
with ``VERIFY_RTOL``; with ``measure`` the module is timed here (``source: measured``). Only TVM's
runtime is needed on the device (``TVM_USE_RUNTIME_LIB=1`` where the compiler library is absent).

The result goes next to the module as ``check-<device>.json`` (atomic; one file per device the
folder was checked on), naming the device (its identity: GPU name and compute capability, or CPU
model, ``-mcpu``, ISA and cores) and the ``subnet.so`` it checked (sha256), so a later recompile
into the same folder cannot pass for checked.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import read_json, write_json
from .errors import OfaDeployError
from .tuning_logs.database import file_sha256

log = logging.getLogger(__name__)

VERIFY_RTOL = 1e-3  # max |compiled - torch| relative to max |torch|: compile's own tolerance
REFERENCE_FILE = "reference.npz"  # written by compile: arrays `input` and `logits`


@dataclass(frozen=True)
class CheckResult:
    """What one check found; ``path`` is the ``check-<device>.json`` it was written to."""

    path: Path
    record: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.record["verification"]["status"] == "passed"


def relative_error(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max absolute error, that error over max |expected|): the measure compile verifies with."""
    abs_err = float(np.abs(got - expected).max())
    return abs_err, abs_err / max(float(np.abs(expected).max()), 1e-12)


def verification(got: np.ndarray, expected: np.ndarray, ran_on: str) -> dict[str, Any]:
    """compile's and check's verification record: passed within ``VERIFY_RTOL``, else failed."""
    if got.shape != expected.shape:
        raise OfaDeployError(f"verification: compiled module returned shape {got.shape}, expected {expected.shape}")
    abs_err, rel_err = relative_error(got, expected)
    return {"status": "passed" if rel_err <= VERIFY_RTOL else "failed", "ran_on": ran_on,
            "max_abs_err": abs_err, "max_rel_err": rel_err, "rtol": VERIFY_RTOL}


def _this_device(kind: str, arch: str) -> Any:
    """The device the module runs on here: this machine's first GPU for a CUDA module, else this CPU."""
    from .tuning_logs.folders import cuda_identity, host_identity

    return cuda_identity(arch) if kind == "cuda" else host_identity()


def _has_cuda_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def check_compiled(folder: str | Path, *, measure: bool = True, repeat: int = 20, number: int = 5) -> CheckResult:
    """Run (and with ``measure`` time) ``folder``'s module on this machine; write ``check-<device>.json``.

    Bad input (not a compile folder, a module for another machine, a CUDA module without a GPU) is
    an :class:`OfaDeployError` naming what is missing; a failed comparison is a result, not an error.
    """
    from .compile import run_local, time_local

    root = Path(folder)
    for name in ("metadata.json", "subnet.so", REFERENCE_FILE):
        if not (root / name).is_file():
            hint = (" (compiled by an ofa-deploy that did not record it: compile again)" if name == REFERENCE_FILE
                    else " (a folder 'ofa-deploy compile' wrote is needed)")
            raise OfaDeployError(f"check {root}: no {name}{hint}")
    meta = read_json(root / "metadata.json", "compile metadata")
    target, tvm_target = meta.get("target") or {}, meta.get("tvm_target") or {}
    kind = str(target.get("kind", "cpu"))
    if kind == "cuda" and not _has_cuda_gpu():
        raise OfaDeployError(f"check {root}: a CUDA module ({tvm_target.get('arch', '?')}) needs an NVIDIA GPU; "
                             f"this machine has none: run the check on the GPU machine")
    device = "cuda" if kind == "cuda" else "cpu"
    with np.load(root / REFERENCE_FILE) as ref:
        x, expected = ref["input"], ref["logits"]
    identity = _this_device(kind, str(tvm_target.get("arch", "")))
    so = root / "subnet.so"
    got = run_local(so, x, device=device)  # another machine's module is refused here, naming both machines
    record: dict[str, Any] = {
        "subnet_id": meta.get("subnet_id"), "target": target.get("name"), "so_sha256": file_sha256(so),
        "device": identity.to_json(), "device_line": identity.describe(), "machine": platform.machine(),
        "checked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "verification": verification(got, expected, f"{device} ({identity.describe()})"),
        "latency": time_local(so, x, device=device, repeat=repeat, number=number).to_dict() if measure else None,
    }
    out = root / f"check-{identity.folder_name()}.json"
    write_json(out, record)
    log.info("wrote %s (verification %s)", out, record["verification"]["status"])
    return CheckResult(out, record)
