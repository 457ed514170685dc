"""MetaSchedule database directories: validation and content hash (no TVM needed)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ofa_deploy.errors import OfaDeployError

log = logging.getLogger(__name__)

# The two files of a tvm.s_tir.meta_schedule JSONDatabase(work_dir=...).
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def check_database_dir(database_dir: str | Path) -> Path:
    """The directory, if it holds a MetaSchedule JSON database; else OfaDeployError.

    Checked here because TVM's JSONDatabase silently *creates* empty files in a wrong
    directory, and a build would then claim a database it never used.
    """
    path = Path(database_dir)
    missing = [name for name in (WORKLOAD_FILE, RECORD_FILE) if not (path / name).is_file()]
    if not path.is_dir() or missing:
        raise OfaDeployError(f"{path} is not a MetaSchedule database directory "
                             f"(missing {', '.join(missing) or 'directory'}; expected {WORKLOAD_FILE} "
                             f"and {RECORD_FILE})")
    return path


def database_hash(database_dir: str | Path) -> str:
    """sha256 over the database's JSON files (sorted by name; name and content both count).

    Identifies exactly which tuning records a module was built with; it changes whenever a
    tuning run adds records.
    """
    path = check_database_dir(database_dir)
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.json")):
        digest.update(file.name.encode() + b"\0")
        digest.update(file.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of one file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_TARGET_KEYS = ("kind", "mcpu", "arch")


def database_targets(database_dir: str | Path) -> list[dict]:
    """Distinct target dicts recorded in the tuning records (each record stores its target)."""
    seen: dict[str, dict] = {}
    with open(Path(database_dir) / RECORD_FILE) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                target = json.loads(line)[1][2]
            except (ValueError, IndexError, TypeError, KeyError):
                raise OfaDeployError(f"{Path(database_dir) / RECORD_FILE}:{lineno}: not a MetaSchedule "
                                     "tuning record") from None
            seen.setdefault(json.dumps(target, sort_keys=True), target)
    return list(seen.values())


def _triple_arch(target: dict) -> str | None:
    triple = target.get("mtriple")
    return str(triple).split("-")[0] if triple else None


def check_database_target(database_dir: str | Path, tvm_target: dict, target_name: str) -> None:
    """Refuse a database tuned for another target (TVM applies records regardless of target).

    Compares kind, mcpu, CUDA arch and the triple's CPU architecture where both sides state them.
    For ``x86-host`` the registry's mcpu is a guess from /proc/cpuinfo (the build uses LLVM's
    answer), so an mcpu difference there is only logged.
    """
    for recorded in database_targets(database_dir):
        for key in _TARGET_KEYS:
            if key in recorded and key in tvm_target and recorded[key] != tvm_target[key]:
                if key == "mcpu" and target_name == "x86-host":
                    log.warning("database %s was tuned for -mcpu=%s; x86-host is %s (guess)",
                                database_dir, recorded[key], tvm_target[key])
                    continue
                raise OfaDeployError(
                    f"database {database_dir} was tuned for {key}={recorded[key]}, but target {target_name} "
                    f"has {key}={tvm_target[key]}: use that target's own tuning_logs directory")
        recorded_arch, wanted_arch = _triple_arch(recorded), _triple_arch(tvm_target)
        if recorded_arch and wanted_arch and recorded_arch != wanted_arch:
            raise OfaDeployError(f"database {database_dir} was tuned for {recorded_arch}, but target "
                                 f"{target_name} is {wanted_arch}")
