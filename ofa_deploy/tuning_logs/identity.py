"""Which device a tuning database, latency table or measurement describes, and which folder is its.

Tuned schedules and timings belong to the CPU (or GPU, or board) that made them: a database tuned
on an AVX-512 ``znver5`` applied on an AVX2 ``znver3``, or a latency model measured on one and
used on the other, silently describes a machine the user does not have. So every folder of
``tuning_logs/`` holds an ``identity.json`` naming its device, ``x86-host`` resolves to the folder
whose identity is *this* machine's, and nothing is appended to or read from a folder as if it were
another device's.

What identifies a device (:class:`DeviceIdentity`): the CPU model name, LLVM ``-mcpu``, the ISA
flags that change generated code (vector widths, FMA, dot products), the physical cores; for an
RPC board its tracker key and what it reports about itself; for a GPU its name and compute
capability. Two identities are the *same device* when everything but the model name and the
free-form report matches (the model name is informative: VMs print "AMD EPYC" for several
generations). A GPU's name does count: an H100 and an H200 are both ``sm_90`` with 132
multiprocessors, and differ in memory bandwidth by 1.4x.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ofa_deploy.atomic import write_json
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.targets.hostcpu import AVX512_FLAGS, detect_host_cpu, switched_off, usable_cores

from .layout import IDENTITY_FILE

FORMAT = 1

# ISA flags (as /proc/cpuinfo spells them) that change what LLVM emits for our kernels; the
# rest (security mitigations, virtualisation, ...) differ between hosts of one CPU and are ignored.
CODEGEN_FLAGS = frozenset({
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
    # aarch64 (/proc/cpuinfo "Features")
    "asimd", "asimdhp", "asimddp", "fphp", "sve", "sve2", "i8mm", "bf16",
}) | AVX512_FLAGS


@dataclass(frozen=True)
class DeviceIdentity:
    """One device's identity (see the module docstring for what makes two the same)."""

    kind: str  # "cpu" (this machine), "rpc" (a board over TVM RPC), "cuda" (a GPU), "named" (no device: a registry target)
    arch: str  # x86_64, aarch64, cuda
    mcpu: str  # LLVM -mcpu (CPUs), sm_XX (GPUs), the registry's -mcpu for named targets
    isa: tuple[str, ...] = ()  # sorted CODEGEN_FLAGS present
    cores: int = 0  # physical cores (0: unknown)
    model_name: str = ""  # informative: not compared
    rpc_key: str = ""  # tracker key of an RPC board
    report: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # what the device says of itself
    note: str = ""  # provenance remark, e.g. "reconstructed from the shipped database's records"
    mattr: tuple[str, ...] = ()  # LLVM features the code is built without (-avx, ...): this CPU as a narrower one

    def _compared(self) -> tuple[Any, ...]:
        """What makes two identities one device (a GPU's name included, a CPU's not: see the module docstring)."""
        return (self.kind, self.arch, self.mcpu, self.isa, self.cores, self.rpc_key, self.mattr,
                self.model_name if self.kind == "cuda" else "")

    def same_device(self, other: "DeviceIdentity") -> bool:
        return self._compared() == other._compared()

    def differences(self, other: "DeviceIdentity") -> list[str]:
        """What differs, in words (for refusal messages)."""
        out = []
        for name in ("kind", "arch", "mcpu", "cores", "rpc_key") + (("model_name",) if self.kind == "cuda" else ()):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name} {a or '-'} vs {b or '-'}")
        if self.mattr != other.mattr:
            out.append(f"-mattr {','.join(self.mattr) or '-'} vs {','.join(other.mattr) or '-'}")
        if self.isa != other.isa:
            only_a = sorted(set(self.isa) - set(other.isa))
            only_b = sorted(set(other.isa) - set(self.isa))
            out.append("ISA " + ", ".join([f"+{f}" for f in only_a] + [f"-{f}" for f in only_b]))
        return out

    def describe(self) -> str:
        """One line a user recognises: 'AMD EPYC (x86_64, -mcpu=znver4, avx512f, 2 cores)'."""
        widest = next((f for f in ("avx512f", "avx2", "avx", "sve2", "sve", "asimd") if f in self.isa), "")
        parts = [self.arch, f"-mcpu={self.mcpu}"] + ([f"-mattr={','.join(self.mattr)}"] if self.mattr else []) + \
                ([widest] if widest else []) + \
                ([f"{self.cores} {'multiprocessors' if self.kind == 'cuda' else 'cores'}"] if self.cores else []) + \
                ([f"rpc key {self.rpc_key}"] if self.rpc_key else [])
        return f"{self.model_name or self.mcpu} ({', '.join(parts)})"

    @property
    def vector_bits(self) -> int | None:
        """The widest SIMD register the device's code uses (None: unknown, e.g. an x86 target named without flags).

        Schedules transfer only between devices of one width: tiles and vector loops sized for
        AVX-512 on a 128-bit ISA ran 1.96x slower than tuning there and slower than the rule
        schedules (BENCHMARKS "Schedule transfer across vector ISAs").
        """
        if self.arch in ("aarch64", "armv7"):
            return 128  # NEON; SVE hardware runs NEON code too, and we emit no SVE
        if self.arch != "x86_64" or not self.isa:
            return None
        return 512 if "avx512f" in self.isa else 256 if {"avx", "avx2"} & set(self.isa) else 128

    def folder_name(self) -> str:
        """The ``tuning_logs/`` folder a measured device gets: ``x86_64-znver4-2c``, ``rpc-pi5``."""
        if self.kind == "rpc":
            return f"rpc-{self.rpc_key}"
        if self.kind == "cuda":  # cuda-sm_90-nvidia-h200
            slug = "-".join("".join(c if c.isalnum() else " " for c in self.model_name.lower()).split())
            return f"cuda-{self.mcpu}" + (f"-{slug}" if slug else "")
        return f"{self.arch}-{self.mcpu}-{self.cores}c" + "".join(f"-no-{f.lstrip('-')}" for f in self.mattr)

    def distance(self, other: "DeviceIdentity") -> float:
        """How far apart two devices are for transferring schedules (0: same device)."""
        if self.same_device(other):
            return 0.0
        d = 0.0 if self.arch == other.arch else 100.0
        d += 0.0 if self.mcpu == other.mcpu else 1.0
        d += len(set(self.isa) ^ set(other.isa)) * 0.5
        d += 0.0 if self.cores == other.cores else 0.25
        return d

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self), "isa": list(self.isa), "mattr": list(self.mattr)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "DeviceIdentity":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise OfaDeployError(f"{where}: not an ofa-deploy device identity (format {FORMAT}); restore or delete it")
        try:
            return cls(kind=str(data["kind"]), arch=str(data["arch"]), mcpu=str(data["mcpu"]),
                       isa=tuple(sorted(str(f) for f in data.get("isa", []))), cores=int(data.get("cores", 0)),
                       model_name=str(data.get("model_name", "")), rpc_key=str(data.get("rpc_key", "")),
                       report=dict(data.get("report", {})), note=str(data.get("note", "")),
                       mattr=tuple(str(f) for f in data.get("mattr", [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise OfaDeployError(f"{where}: device identity lacks or mistypes a field ({exc}); restore or delete it") \
                from None


def host_identity(mcpu: str | None = None, disabled: tuple[str, ...] = ()) -> DeviceIdentity:
    """This machine's CPU. ``mcpu``: LLVM's own name when the caller has it (the worker asks LLVM).
    ``disabled``: x86 features switched off (the ``x86-host:-avx,...`` targets): this CPU as a narrower one."""
    disabled = switched_off(disabled)
    cpu = detect_host_cpu().restricted(disabled)
    return DeviceIdentity(kind="cpu", arch=platform.machine(), mcpu=mcpu or cpu.mcpu,
                          isa=tuple(sorted(cpu.flags & CODEGEN_FLAGS)), cores=usable_cores(),
                          model_name=cpu.model_name, mattr=tuple(f"-{f}" for f in disabled))


def read_identity(folder: Path) -> DeviceIdentity | None:
    path = Path(folder) / IDENTITY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise OfaDeployError(f"{path}: not JSON; restore it (git checkout) or delete the folder") from None
    return DeviceIdentity.from_json(data, str(path))


def write_identity(folder: Path, identity: DeviceIdentity) -> None:
    write_json(Path(folder) / IDENTITY_FILE, identity.to_json())


def _claimable(existing: DeviceIdentity | None, identity: DeviceIdentity) -> bool:
    """A folder with no identity, or one that only names a registry target when a real device arrives."""
    return existing is None or (existing.kind == "named" and identity.kind != "named")


def check_folder(folder: Path, identity: DeviceIdentity, what: str) -> None:
    """Refuse, in one line, a ``folder`` that holds another device's files; writes nothing.

    Called before a run contacts its device (a board over RPC), so a wrong key is refused at once
    and an unreachable board leaves no identity.json behind; :func:`claim_folder` then writes it.
    """
    existing = read_identity(folder)
    if existing is None or _claimable(existing, identity):
        return  # a new folder, or a registry target's first real device
    if not existing.same_device(identity):
        fix = (f"pass that board's key (--rpc HOST:PORT:{existing.rpc_key}) or another --database"
               if existing.kind == "rpc" else "use --target x86-host (this machine's own folder) or another --database")
        raise OfaDeployError(
            f"{folder} holds {what} of {existing.describe()}, and this run is on {identity.describe()} "
            f"({'; '.join(existing.differences(identity))}): refusing to mix two devices in one folder; {fix}")


def claim_folder(folder: Path, identity: DeviceIdentity, what: str) -> None:
    """Make ``folder`` this device's, or refuse: a run never appends to another device's files.

    Writes identity.json when the folder has none (a new folder, or one from before identities),
    and when it only names a registry target (estimates, no device yet) and a real device arrives.
    """
    check_folder(folder, identity, what)
    if _claimable(read_identity(folder), identity):
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_identity(folder, identity)  # a new folder, or a registry target's first real device
