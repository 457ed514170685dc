"""Describe the build machine's x86-64 CPU without importing TVM/LLVM.

The registry must import in milliseconds, so the LLVM ``-mcpu`` name is guessed from
``/proc/cpuinfo`` (vendor, family, model, ISA flags). ``compile/`` asks LLVM itself
(``llvm_get_system_cpu``) when it builds for ``x86-host`` and uses that if it differs, so a
wrong guess here costs nothing but a log line.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostCpu:
    """What /proc/cpuinfo says about this machine."""

    mcpu: str
    model_name: str
    cores: int
    ghz: float | None
    flags: frozenset[str]

    @property
    def fp32_flops_per_cycle(self) -> int:
        """Per-core fp32 FLOP/cycle assuming two FMA pipes of the widest vector ISA."""
        if "avx512f" in self.flags:
            return 64  # 2 x 16 lanes x 2 (FMA); some parts have one 512-bit pipe: an upper bound
        if "avx2" in self.flags and "fma" in self.flags:
            return 32
        if "avx" in self.flags:
            return 16
        return 8


    def restricted(self, disabled: Iterable[str]) -> HostCpu:
        """This CPU with x86 features switched off (``-mattr=-avx,...``): the flags LLVM's code may still use.

        Raises:
            OfaDeployError: a feature that cannot be switched off here, naming the allowed ones.
        """
        off: set[str] = set()
        for feature in disabled:
            if feature not in SWITCHABLE_FEATURES:
                from ofa_deploy.errors import OfaDeployError

                raise OfaDeployError(f"-mattr=-{feature}: x86-host can switch off only "
                                     f"{', '.join('-' + f for f in SWITCHABLE_FEATURES)}")
            off |= SWITCHABLE_FEATURES[feature]
        return dataclasses.replace(self, flags=self.flags - off)


HOST_NAME = "x86-host"  # the registry name that means "this machine"
AVX512_FLAGS = frozenset({"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi",
                     "avx512_vbmi2", "avx512_vnni", "avx512_bf16", "avx512_fp16"})
# x86 features a user may switch off with -mattr=-f, each with the features LLVM drops with it
# (AVX-512 needs AVX2, FMA and F16C; those need AVX), in /proc/cpuinfo spelling. Switching vector
# ISAs off on the host is how we time 128- and 256-bit code where timings are real (#17).
SWITCHABLE_FEATURES: dict[str, frozenset[str]] = {
    "avx": frozenset({"avx", "avx2", "fma", "f16c", "avx_vnni"}) | AVX512_FLAGS,
    "avx2": frozenset({"avx2", "avx_vnni"}) | AVX512_FLAGS,
    "fma": frozenset({"fma"}) | AVX512_FLAGS,
    "f16c": frozenset({"f16c"}) | AVX512_FLAGS,
    "avx512f": AVX512_FLAGS,
}


def switched_off(disabled: Iterable[str]) -> tuple[str, ...]:
    """``disabled`` features in one order (SWITCHABLE_FEATURES', unknown ones last), each once: ``-avx2,-avx``
    and ``-avx,-avx2`` are one target, one folder."""
    known = list(SWITCHABLE_FEATURES)
    return tuple(sorted(dict.fromkeys(disabled), key=lambda f: known.index(f) if f in known else len(known)))


def host_variant_name(disabled: Iterable[str]) -> str:
    """The target name of this machine with ``disabled`` features off: ``x86-host:-avx,-avx2`` (``x86-host``: none)."""
    off = switched_off(disabled)
    return HOST_NAME + (":" + ",".join(f"-{f}" for f in off) if off else "")


def host_variant(name: str) -> tuple[str, ...] | None:
    """The features a host target name switches off (``()`` for ``x86-host``), or None for any other target."""
    if name == HOST_NAME:
        return ()
    head, sep, tail = name.partition(":")
    if head != HOST_NAME or not sep:
        return None
    return switched_off(part.strip().lstrip("-") for part in tail.split(",") if part.strip())


def _amd_mcpu(family: int, model: int) -> str:
    if family == 0x17:
        return "znver2" if model >= 0x30 else "znver1"
    if family == 0x19:
        zen4 = 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF
        return "znver4" if zen4 else "znver3"
    if family >= 0x1A:
        return "znver5"
    return "x86-64"


def _intel_mcpu(flags: frozenset[str]) -> str:
    if "amx_tile" in flags:
        return "sapphirerapids"
    if "avx512f" in flags:
        if "avx512_vbmi2" in flags:
            return "icelake-server"
        return "cascadelake" if "avx512_vnni" in flags else "skylake-avx512"
    if "avx2" in flags:
        return "haswell"
    if "sse4_2" in flags:
        return "nehalem"
    return "x86-64"


def _parse_cpuinfo(text: str) -> dict[str, str]:
    """Fields of the first processor block."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


@functools.lru_cache(maxsize=1)
def detect_host_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> HostCpu:
    """Best-effort description of the local x86-64 CPU (generic values when unknown)."""
    cores = os.cpu_count() or 1
    try:
        fields = _parse_cpuinfo(Path(cpuinfo_path).read_text())
    except OSError:
        fields = {}
    flags = frozenset(fields.get("flags", "").split())
    vendor = fields.get("vendor_id", "")
    try:
        family = int(fields.get("cpu family", "0"))
        model = int(fields.get("model", "0"))
    except ValueError:
        family = model = 0
    if platform.machine() not in ("x86_64", "AMD64"):
        mcpu = "x86-64"
    elif vendor == "AuthenticAMD":
        mcpu = _amd_mcpu(family, model)
    elif vendor == "GenuineIntel":
        mcpu = _intel_mcpu(flags)
    else:
        mcpu = "x86-64"
    try:
        ghz: float | None = float(fields["cpu MHz"]) / 1000.0
    except (KeyError, ValueError):
        ghz = None
    return HostCpu(mcpu=mcpu, model_name=fields.get("model name", "unknown x86-64"), cores=cores,
                   ghz=ghz, flags=flags)


def usable_cores() -> int:
    """Physical CPU cores this process may run on (affinity masks such as ``taskset`` respected).

    Hyper-threads of one core share its FMA units, so compute-bound kernels gain nothing from
    them: with two-way SMT the logical CPUs allowed are halved. Where psutil cannot tell, every
    allowed logical CPU counts.
    """
    try:
        logical_allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        logical_allowed = os.cpu_count() or 1
    try:
        import psutil

        physical, logical = psutil.cpu_count(logical=False), psutil.cpu_count(logical=True)
    except ImportError:
        physical = logical = None
    if physical and logical and logical > physical:
        return max(1, logical_allowed * physical // logical)
    return logical_allowed


def host_copy_bandwidth_gbps(model_name: str, cache_dir: str | None = None) -> float:
    """DRAM bandwidth of this machine from a timed 256 MiB numpy copy (read + write), cached per CPU model.

    A copy with one thread underestimates what all cores can pull, so the roofline built on it is
    conservative. The first call costs about half a second; later calls read the cache.
    """
    import json
    import time
    from pathlib import Path

    import numpy as np

    from ofa_deploy.cache import cache_root

    root = Path(cache_dir) if cache_dir else cache_root()
    path = root / "host_bandwidth.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("model_name") == model_name:
            return float(cached["gbps"])
    except (OSError, ValueError, KeyError):
        pass
    src = np.ones(32 * 2**20, dtype=np.float64)  # 256 MiB: far beyond any cache
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    gbps = round(2 * src.nbytes / best / 1e9, 1)
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"model_name": model_name, "gbps": gbps}))
    os.replace(tmp, path)
    return gbps
