"""The aarch64 TVM runtime (libtvm_runtime.so + libtvm_ffi.so), deploy app and RPC server.

All come from what is installed here: the runtime libs are unpacked from the aarch64 wheels
of the *same* apache-tvm / apache-tvm-ffi versions (a module must be loaded by the runtime
version that built it), fetched once with pip and cached; the programs are
``examples/deploy_cpp/deploy_app.cc`` and ``rpc_server.cc`` cross-compiled against them with the
x86 wheel's tvm-ffi headers (architecture-independent).

    python -m ofa_deploy.compile aarch64-runtime             # fetch (if needed), print the dir
    python -m ofa_deploy.compile aarch64-runtime --print-dir # only print where it goes
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ofa_deploy.cache import cache_root
from ofa_deploy.errors import OfaDeployError

from .binfmt import elf_machine
from .toolchain import require_tool

log = logging.getLogger(__name__)
RUNTIME_LIBS = {"libtvm_runtime.so": "tvm/lib/libtvm_runtime.so", "libtvm_ffi.so": "tvm_ffi/lib/libtvm_ffi.so"}
AARCH64_PLATFORM = "manylinux_2_28_aarch64"
APP_SOURCE_ENV = "OFA_DEPLOY_APP_SRC"


def tvm_versions() -> tuple[str, str]:
    """Installed (apache-tvm, apache-tvm-ffi) versions."""
    try:
        return importlib.metadata.version("apache-tvm"), importlib.metadata.version("apache-tvm-ffi")
    except importlib.metadata.PackageNotFoundError as exc:
        raise OfaDeployError(f"{exc.name} is not installed (pip install -e . installs it)") from None


def runtime_dir(cache_dir: str | Path | None = None) -> Path:
    tvm_version, ffi_version = tvm_versions()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return root / "aarch64_runtime" / f"tvm-{tvm_version}_ffi-{ffi_version}"


def _have_runtime(path: Path) -> bool:
    return all((path / name).is_file() for name in RUNTIME_LIBS)


def fetch_aarch64_runtime(cache_dir: str | Path | None = None) -> Path:
    """Directory holding the aarch64 libtvm_runtime.so and libtvm_ffi.so (pip download, cached)."""
    dest = runtime_dir(cache_dir)
    if _have_runtime(dest):
        return dest
    tvm_version, ffi_version = tvm_versions()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", AARCH64_PLATFORM, "--python-version", f"{sys.version_info[0]}{sys.version_info[1]}",
               "--disable-pip-version-check", "-q", "-d", tmp,
               f"apache-tvm=={tvm_version}", f"apache-tvm-ffi=={ffi_version}"]
        log.info("fetching the aarch64 TVM runtime %s / tvm-ffi %s (pip download, once)", tvm_version, ffi_version)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise OfaDeployError(f"could not download the aarch64 TVM wheels with pip (network needed once; "
                                 f"cache: {dest}):\n{tail}")
        staged = Path(tmp) / "runtime"
        staged.mkdir()
        members = set(RUNTIME_LIBS.values())
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                for name in members.intersection(zf.namelist()):
                    (staged / Path(name).name).write_bytes(zf.read(name))
        for lib in RUNTIME_LIBS:
            if not (staged / lib).is_file() or elf_machine(staged / lib) != "aarch64":
                raise OfaDeployError(f"the downloaded aarch64 wheels do not contain an aarch64 {lib}")
        try:
            os.replace(staged, dest)
        except OSError:  # another process finished first
            if not _have_runtime(dest):
                raise
    return dest


def app_source(name: str = "deploy_app.cc") -> Path:
    """``examples/deploy_cpp/NAME`` of this checkout (``$OFA_DEPLOY_APP_SRC``: that directory or,
    for the deploy app, the file itself)."""
    env = os.environ.get(APP_SOURCE_ENV)
    default_dir = Path(__file__).resolve().parents[1] / "examples" / "deploy_cpp"
    if env and Path(env).is_dir():
        path = Path(env) / name
    elif env and name == "deploy_app.cc":
        path = Path(env)
    else:
        path = default_dir / name
    if not path.is_file():
        raise OfaDeployError(f"{name} not found at {path}: use a source checkout "
                             f"(pip install -e .) or set {APP_SOURCE_ENV}")
    return path


def tvm_ffi_include_dir() -> Path:
    spec = importlib.util.find_spec("tvm_ffi")
    if spec is None or spec.origin is None:
        raise OfaDeployError("apache-tvm-ffi is not installed (its headers build the deploy app)")
    return Path(spec.origin).parent / "include"


def _cross_build(src: Path, cache_dir: str | Path | None) -> Path:
    """``src`` cross-compiled for aarch64 next to the runtime libs (rpath $ORIGIN), cached by content."""
    cxx = require_tool("aarch64-linux-gnu-g++", f"cross-compile {src.name} for aarch64")
    rt = fetch_aarch64_runtime(cache_dir)
    key = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    out = rt / f"{src.stem}-{key}"
    if out.is_file():
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    cmd = [cxx, "-O2", "-std=c++17", f"-I{tvm_ffi_include_dir()}", str(src), "-o", str(tmp), f"-L{rt}",
           "-Wl,-rpath,$ORIGIN", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,--as-needed",
           "-ldl", "-lpthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise OfaDeployError(f"cross-compiling {src.name} failed", details=proc.stderr.strip()[-2000:])
    os.replace(tmp, out)
    return out


def build_deploy_app_aarch64(cache_dir: str | Path | None = None) -> Path:
    """The cross-compiled deploy app, next to the aarch64 runtime libs (rpath $ORIGIN); cached."""
    return _cross_build(app_source(), cache_dir)


def build_rpc_server_aarch64(cache_dir: str | Path | None = None) -> Path:
    """The cross-compiled C++ RPC server (``examples/deploy_cpp/rpc_server.cc``); cached.

    Runs on a board without Python, and under qemu here (emulate.py: emulated_rpc_server).
    """
    return _cross_build(app_source("rpc_server.cc"), cache_dir)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(runtime_dir() if "--print-dir" in argv else fetch_aarch64_runtime())
    except OfaDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
