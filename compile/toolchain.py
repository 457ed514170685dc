"""Find the external tools a build needs, or say exactly what to install.

Checked before any TVM work starts, so a missing tool is a one-line OfaDeployError instead of
a compiler traceback from deep inside ``export_library``.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from pathlib import Path

from ofa_deploy.errors import OfaDeployError

# command -> how to get it (Debian/Ubuntu package names)
_INSTALL_HINT = {
    "g++": "apt-get install g++",
    "aarch64-linux-gnu-g++": "apt-get install g++-aarch64-linux-gnu",
    "arm-linux-gnueabihf-g++": "apt-get install g++-arm-linux-gnueabihf",
    "qemu-aarch64-static": "apt-get install qemu-user-static",
}
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")


def require_tool(command: str, purpose: str) -> str:
    """Absolute path of ``command`` on PATH, else OfaDeployError naming the package."""
    path = shutil.which(command)
    if path is None:
        hint = _INSTALL_HINT.get(command, f"install {command}")
        raise OfaDeployError(f"{command} not found on PATH (needed to {purpose}); install it: {hint}")
    return path


def find_nvcc() -> str:
    """Path of nvcc: PATH, $CUDA_HOME/bin, /usr/local/cuda/bin, then pip's nvidia-cuda-nvcc wheel."""
    candidates = [shutil.which("nvcc")]
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            candidates.append(str(Path(os.environ[env]) / "bin" / "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for site in map(Path, sys.path):
        candidates += sorted(str(p) for p in site.glob("nvidia/*/bin/nvcc"))
    for cand in candidates:
        if cand and os.access(cand, os.X_OK):
            return cand
    raise OfaDeployError(
        "nvcc not found (needed to compile CUDA kernels; no GPU is needed): install the NVIDIA CUDA "
        "toolkit (apt-get install nvidia-cuda-toolkit, NVIDIA's cuda-toolkit packages, or pip install "
        "nvidia-cuda-nvcc) "
        "or set CUDA_HOME")


def require_qemu_aarch64() -> str:
    """qemu user-mode emulator for aarch64 plus the aarch64 C/C++ runtime it loads."""
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        path = shutil.which(name)
        if path:
            break
    else:
        raise OfaDeployError("qemu-aarch64-static not found (needed to run aarch64 modules on this "
                             f"machine); install it: {_INSTALL_HINT['qemu-aarch64-static']}")
    if not (AARCH64_SYSROOT / "lib" / "ld-linux-aarch64.so.1").exists():
        raise OfaDeployError(f"aarch64 C library not found in {AARCH64_SYSROOT} (needed by qemu); "
                             f"install it: {_INSTALL_HINT['aarch64-linux-gnu-g++']}")
    return path


def linker_for(cross_compiler: str | None) -> str:
    """The C++ compiler that links the exported module (cross, or this machine's)."""
    if cross_compiler:
        return require_tool(cross_compiler, "link the module for the target")
    return require_tool(os.environ.get("CXX", "g++"), "link the module")


def installed_tvm_version() -> str | None:
    """The installed TVM's version, read from package metadata (importing TVM takes seconds)."""
    for dist in ("apache-tvm", "tvm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
