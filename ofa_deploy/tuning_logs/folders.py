"""Which ``tuning_logs/`` folder belongs to a target, and which other devices' folders are nearest.

A folder is a device's (identity.py): named targets (``cortex-a76``, ``cuda-sm80``, a board tuned
over RPC) keep the folder of their registry name, and ``x86-host`` ("this machine") resolves to
the folder whose ``identity.json`` is this CPU, so two developers' machines (a ``znver3`` and a
``znver5``) never read or extend each other's database or latency model by accident. A CPU with
no folder yet gets ``tuning_logs/<arch>-<mcpu>-<cores>c/`` the first time it tunes or profiles;
this CPU with vector features switched off (``x86-host:-avx,...``) is a device of its own
(``...-2c-no-avx-...``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.targets.hostcpu import host_variant

from .identity import DeviceIdentity, host_identity, read_identity
from .layout import REPO_TUNING_LOGS, tuning_logs_dir

log = logging.getLogger(__name__)


def target_dir(target_name: str) -> Path:
    """The folder of everything tuned or profiled for one registry target (``x86-host``: this CPU's)."""
    disabled = host_variant(target_name)
    return host_dir(disabled) if disabled is not None else tuning_logs_dir() / target_name


def host_dir(disabled: tuple[str, ...] = ()) -> Path:
    """This machine's folder (with ``disabled`` features off: that variant's): the one whose identity it is,
    else the new folder named after it."""
    me = host_identity(disabled=disabled)
    for folder, identity in device_folders():
        if identity.same_device(me):
            return folder
    return tuning_logs_dir() / me.folder_name()


def device_folders(*, shipped: bool = False) -> list[tuple[Path, DeviceIdentity]]:
    """Every folder of ``tuning_logs/`` that names its device, sorted by name.

    ``shipped``: also the repository's folders when ``OFA_DEPLOY_TUNING_LOGS`` points elsewhere
    (a fresh folder still borrows from what the repository ships; the same device is listed once,
    the user's folder first). A folder whose identity.json is unreadable is skipped with a
    warning: one damaged folder must not stop work for every other device.
    """
    roots = [tuning_logs_dir()]
    if shipped and REPO_TUNING_LOGS.resolve() != tuning_logs_dir().resolve():
        roots.append(REPO_TUNING_LOGS)
    found: list[tuple[Path, DeviceIdentity]] = []
    for root in roots:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
            try:
                identity = read_identity(folder)
            except OfaDeployError as exc:
                log.warning("skipping %s: %s", folder, exc)
                continue
            if identity is not None and not any(i.same_device(identity) for _, i in found):
                found.append((folder, identity))
    return found


def nearest_devices(identity: DeviceIdentity, *, exclude: Path | None = None) -> list[tuple[Path, DeviceIdentity]]:
    """Other devices' folders, nearest first (same architecture and ISA before the rest)."""
    others = [(f, i) for f, i in device_folders(shipped=True) if not i.same_device(identity)
              and (exclude is None or f.resolve() != Path(exclude).resolve())]
    return sorted(others, key=lambda fi: (identity.distance(fi[1]), fi[0].name))


def target_identity(target_name: str) -> DeviceIdentity:
    """The device a registry target names: this CPU for ``x86-host``, else its folder's identity.json,
    else what the registry says (a ``named`` identity: no device has claimed the folder yet)."""
    disabled = host_variant(target_name)
    if disabled is not None:
        return host_identity(disabled=disabled)
    existing = read_identity(tuning_logs_dir() / target_name)
    if existing is not None:
        return existing
    from ofa_deploy.targets import get_target

    spec = get_target(target_name)
    mcpu = str(spec.tvm_target.get("mcpu") or spec.tvm_target.get("arch") or spec.kind)
    return DeviceIdentity(kind="named", arch=spec.arch, mcpu=mcpu, cores=spec.cores or 0, model_name=spec.name)


def measuring_identity(target_name: str, rpc_key: str | None = None) -> DeviceIdentity:
    """The device a tune or profile run measures on: this CPU, a board behind an RPC key, or this GPU.

    What an RPC board reports about itself is added by the caller when it has asked (``report``).
    """
    if rpc_key:
        base = target_identity(target_name)
        return DeviceIdentity(kind="rpc", arch=base.arch, mcpu=base.mcpu, isa=base.isa, cores=base.cores,
                              model_name=base.model_name, rpc_key=rpc_key, mattr=base.mattr)
    if host_variant(target_name) is not None:
        return target_identity(target_name)
    from ofa_deploy.targets import get_target

    spec = get_target(target_name)
    if spec.kind == "cuda":
        return cuda_identity(str(spec.tvm_target.get("arch", "")))
    return target_identity(target_name)


def cuda_identity(arch: str = "") -> DeviceIdentity:
    """This machine's first GPU: name, compute capability (``sm_XX``), multiprocessors and memory (from torch).

    ``arch``: the CUDA target's ``-arch``, the identity's only content where no GPU is visible (a
    device named, not seen). With a GPU the device is what it says it is, whatever the target.
    """
    import torch

    if not torch.cuda.is_available():
        return DeviceIdentity(kind="cuda", arch="cuda", mcpu=arch)
    props = torch.cuda.get_device_properties(0)
    capability = f"sm_{props.major}{props.minor}"
    return DeviceIdentity(kind="cuda", arch="cuda", mcpu=capability, cores=props.multi_processor_count,
                          model_name=props.name, report={"compute_capability": capability, "target_arch": arch,
                                                         "memory_gib": round(props.total_memory / 2**30, 1)})
