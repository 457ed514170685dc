"""MetaSchedule database directories: validation and content hash (no TVM needed)."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from pathlib import Path

from ofa_deploy.atomic import atomic_path
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
    """sha256 over the database's two JSON files (name and content both count).

    Identifies exactly which tuning records a module was built with; it changes whenever a
    tuning run adds records. Only those two files: the directory also holds the latency model
    (latency_model.json), which records this hash and must not change it.
    """
    path = check_database_dir(database_dir)
    digest = hashlib.sha256()
    for file in sorted(path / name for name in (WORKLOAD_FILE, RECORD_FILE)):
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
        # An llvm target without a triple (x86-host) is this machine's CPU architecture.
        wanted_arch = _triple_arch(tvm_target) or (platform.machine() if tvm_target.get("kind") == "llvm" else None)
        recorded_arch = _triple_arch(recorded)
        if recorded_arch and wanted_arch and recorded_arch != wanted_arch:
            raise OfaDeployError(f"database {database_dir} was tuned for {recorded_arch}, but target "
                                 f"{target_name} is {wanted_arch}")


def _valid_line(line: bytes, record: bool) -> bool:
    """A complete workload line ``[hash, module]`` or record line ``[workload_index, [4 fields]]``."""
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    if not isinstance(entry, list) or len(entry) != 2:
        return False
    if record:
        return isinstance(entry[0], int) and entry[0] >= 0 and isinstance(entry[1], list) and len(entry[1]) == 4
    return isinstance(entry[0], str) and entry[0].split("-")[0].isdigit() and isinstance(entry[1], str)


def repair_database(database_dir: str | Path) -> dict[str, int]:
    """Drop a torn last line of either database file (a kill -9 mid-append); ``{file: lines dropped}``.

    MetaSchedule appends one JSON line per workload or record, so a killed tuning run can leave
    at most a truncated final line, or a final line without its newline (the next append would
    fuse onto it), and TVM refuses to load either. Both are fixed atomically. Damage anywhere
    else is not a torn write: OfaDeployError naming the file and line, never a silent fix. A
    record pointing at a workload the table does not hold is damage too.
    """
    path = Path(database_dir)
    dropped: dict[str, int] = {}
    n_workloads = 0
    for name, record in ((WORKLOAD_FILE, False), (RECORD_FILE, True)):
        file = path / name
        if not file.is_file():
            continue
        data = file.read_bytes()
        lines = data.split(b"\n")
        complete = lines[:-1]  # the text after the last newline is never a complete line
        tail = [lines[-1]] if lines[-1].strip() else []
        if tail and _valid_line(tail[0], record):  # whole, only its newline is missing: keep it
            complete.append(tail.pop())
        bad = [i for i, line in enumerate(complete) if line.strip() and not _valid_line(line, record)]
        if len(bad) > 1 or (bad and bad[0] != len(complete) - 1):
            raise OfaDeployError(f"{file}:{bad[0] + 1}: corrupted MetaSchedule database (not a complete "
                                 f"{'tuning record' if record else 'workload'} line, and not a torn last line "
                                 "from an interrupted run); restore the file or delete the database directory")
        if bad:  # a complete-looking but unparsable last line: torn as well
            tail = [complete.pop()] + tail
        if record:
            for i, line in enumerate(complete):
                if line.strip() and json.loads(line)[0] >= n_workloads:
                    raise OfaDeployError(f"{file}:{i + 1}: corrupted MetaSchedule database (record of workload "
                                         f"{json.loads(line)[0]}, but {WORKLOAD_FILE} holds {n_workloads})")
        else:
            n_workloads = sum(1 for line in complete if line.strip())
        if tail or (data and not data.endswith(b"\n")):
            with atomic_path(file) as tmp:
                tmp.write_bytes(b"".join(line + b"\n" for line in complete))
            dropped[name] = len(tail)
            log.warning("repaired %s (an interrupted tuning run): %s", file,
                        f"dropped {len(tail)} torn line(s) at the end" if tail else "added the missing final newline")
    return dropped
