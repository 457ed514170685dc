"""Run an aarch64 module on this x86 machine: the deploy app under qemu user-mode emulation.

For correctness only (do outputs match?): emulation runs the real aarch64 code, so numerics are
the device's, but its speed says nothing about the device, so no latency is reported.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ofa_deploy.errors import OfaDeployError

from .aarch64_runtime import build_deploy_app_aarch64
from .binfmt import elf_machine
from .toolchain import AARCH64_SYSROOT, require_qemu_aarch64

_SHAPE_LINE = re.compile(r"^output shape: ([0-9x]+)$", re.MULTILINE)


def run_emulated_aarch64(so_path: str | Path, input: np.ndarray, *, timeout: float | None = 900.0,
                         cache_dir: str | Path | None = None) -> np.ndarray:
    """Output of an aarch64 module for ``input``, computed by the aarch64 deploy app under qemu.

    Needs ``qemu-user-static`` and ``g++-aarch64-linux-gnu`` (for the app and the aarch64 C
    library); the aarch64 TVM runtime is fetched with pip once (aarch64_runtime.py).
    """
    path = Path(so_path)
    if not path.is_file():
        raise OfaDeployError(f"module not found: {path}")
    machine = elf_machine(path)
    if machine != "aarch64":
        raise OfaDeployError(f"{path} is not an aarch64 module ({machine or 'not ELF'})")
    qemu = require_qemu_aarch64()
    app = build_deploy_app_aarch64(cache_dir)
    x = np.ascontiguousarray(input, dtype="<f4")
    with tempfile.TemporaryDirectory(prefix="ofa_deploy_qemu_") as tmp:
        in_path, out_path = Path(tmp) / "input.f32", Path(tmp) / "output.f32"
        x.tofile(in_path)
        cmd = [qemu, "-L", str(AARCH64_SYSROOT), str(app), str(path.resolve()), "--input", str(in_path),
               "--shape", ",".join(str(d) for d in x.shape), "--output", str(out_path),
               "--repeat", "1", "--warmup", "0", "--topk", "0"]
        env = {**os.environ, "TVM_NUM_THREADS": "1"}  # emulated threads only add overhead
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise OfaDeployError(f"emulated run of {path.name} timed out after {timeout:.0f} s") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-15:])
            raise OfaDeployError(f"emulated run of {path.name} failed (exit {proc.returncode}):\n{tail}")
        match = _SHAPE_LINE.search(proc.stdout)
        if match is None:
            raise OfaDeployError(f"deploy app printed no output shape:\n{proc.stdout[-1000:]}")
        shape = tuple(int(d) for d in match.group(1).split("x"))
        return np.fromfile(out_path, dtype="<f4").reshape(shape)
