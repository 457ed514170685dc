"""MetaSchedule database folders: validation, repair, content hash, the packed (gzip) form (no TVM needed).

A database is two JSON-lines files. Tuning appends to them as plain files; the repository
ships them gzipped (``*.json.gz``: 3.7 MB instead of 51 MB for x86-host), because JSON of
scheduling traces compresses ~14x. :func:`resolve_database` turns a folder holding either form
into a folder TVM can read (a packed one is unpacked once into a content-hashed cache), and
:func:`database_hash` hashes the *unpacked* content, so packing never changes a database's
identity (latency models keep matching). :func:`default_database` is the database of a target's
``tuning_logs/<target>/`` folder, the one ``compile``, ``profile`` and ``search`` use by default.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Callable

from ofa_deploy.atomic import atomic_path
from ofa_deploy.cache import cache_root
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.targets.hostcpu import host_variant

from .folders import nearest_devices, target_dir, target_identity
from .layout import (CHUNK_DIR, COST_MODEL_FILE, DATABASE_FILES, FAILED_RUN_SECS, PACKED, RECORD_FILE, STATE_FILE,
                     WORKLOAD_FILE)

log = logging.getLogger(__name__)
_warned: set[str] = set()


def is_packed(database_dir: str | Path) -> bool:
    """True when the folder holds only the gzipped form (plain files, if present, win)."""
    path = Path(database_dir)
    return (all((path / (name + PACKED)).is_file() for name in DATABASE_FILES)
            and not (path / RECORD_FILE).is_file())


def _gunzip_into(src_dir: Path, dst_dir: Path) -> None:
    """Unpack both files (each atomically); a damaged ``.gz`` is an OfaDeployError naming it."""
    for name in DATABASE_FILES:
        try:
            with gzip.open(src_dir / (name + PACKED), "rb") as src, atomic_path(dst_dir / name) as tmp:
                with open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (OSError, EOFError, zlib.error) as err:
            raise OfaDeployError(f"{src_dir / (name + PACKED)}: not a readable gzip file ({err}); restore it "
                                 "(e.g. git checkout) or re-tune") from None


def resolve_database(database_dir: str | Path) -> Path | None:
    """A folder TVM can read for this database: the folder itself (plain), its unpacked cache copy (packed), or None.

    The cache copy lives in ``<cache>/databases/<sha256 of the packed files>/``, made atomically
    (unpack into a temp folder, rename), so concurrent or killed callers never see half a file.
    """
    path = Path(database_dir)
    if (path / RECORD_FILE).is_file():
        return path
    if not is_packed(path):
        return None
    digest = hashlib.sha256(b"".join(file_sha256(path / (n + PACKED)).encode() for n in DATABASE_FILES))
    dest = cache_root() / "databases" / digest.hexdigest()[:20]
    if not (dest / RECORD_FILE).is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
        try:
            _gunzip_into(path, tmp)
            os.rename(tmp, dest)
        except OSError:  # another process finished first: its copy is identical
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; a failed unpack leaves nothing
        log.info("unpacked database %s into %s", path, dest)
    return dest


def database_data_layout(database_dir: str | Path) -> str | None:
    """The data layout (``NCHW``/``NHWC``) a database folder's workloads are in; None when unknown.

    ``tune`` writes it into tune_state.json. A state file without the field means ``NCHW``: every
    database before the field existed was tuned in NCHW. Unknown: no database, or no state file
    (a cache copy, a database made by hand).
    """
    return _state_field(database_dir, "data_layout", "NCHW")


CACHE_PROTOCOLS = ("cold", "warm")


def database_cache(database_dir: str | Path) -> str | None:
    """How a database folder's candidates were timed: ``cold`` or ``warm`` caches; None when unknown.

    ``cold``: before each timing sample the caches are flushed of everything but the kernel's
    input (its weights and output come from memory, as in a network's inference); ``warm``:
    MetaSchedule's default, the kernel rerun with everything cached. Records timed one way must
    never compete with records timed the other in one task. ``tune`` writes the field into
    tune_state.json; a state file without it means ``warm`` (every database before it existed).
    Unknown: no database, or no state file.
    """
    return _state_field(database_dir, "cache", "warm")


def _state_field(database_dir: str | Path, name: str, before_the_field: str) -> str | None:
    """A field of a database folder's tune_state.json; ``before_the_field`` when the state file lacks it
    (written before the field existed); None without a database or a readable state file."""
    path = Path(database_dir)
    if not ((path / RECORD_FILE).is_file() or is_packed(path)):
        return None
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return str(state.get(name, before_the_field)) if isinstance(state, dict) else None


def target_data_layout(target_name: str) -> str:
    """The layout modules for this target are built in (:attr:`TargetSpec.data_layout`)."""
    from ofa_deploy.targets import get_target

    return get_target(target_name).data_layout


def default_database(target_name: str) -> Path | None:
    """The target's database in ``tuning_logs/<target>/`` as a folder TVM can read (unpacked if shipped gzipped).

    None when the folder has none, or one in another data layout than the target's builds: its
    workloads are other functions, it would schedule nothing (warned once per process).
    """
    folder = target_dir(target_name)
    layout, wanted = database_data_layout(folder), target_data_layout(target_name)
    if layout is not None and layout != wanted:
        if str(folder) not in _warned:
            _warned.add(str(folder))
            log.warning("%s holds a database tuned in %s; %s modules are built in %s, so none of its schedules "
                        "apply and it is not used. Move it away and re-tune: 'ofa-deploy tune --target %s'",
                        folder, layout, target_name, wanted, target_name)
        return None
    return resolve_database(folder)


def transfer_databases(target_name: str, limit: int = 3) -> list[tuple[str, Path]]:
    """Other devices' databases a build for ``target_name`` may borrow schedules from, nearest first.

    (label, the database's fastest records: :func:`best_records`) per folder of
    :func:`transfer_folders`; the label is the folder's name, recorded in metadata.json.
    """
    return [(folder.name, best_records(resolved)) for folder, resolved in transfer_folders(target_name, limit)]


def transfer_folders(target_name: str, limit: int = 3) -> list[tuple[Path, Path]]:
    """(device folder, its database as TVM reads it) of the devices ``target_name`` borrows from, nearest first.

    Only CPU databases serve CPU targets and GPU ones GPU targets (a trace's thread bindings do
    not transfer between the two), and a CPU's only CPUs of its vector width where both are known
    (:attr:`DeviceIdentity.vector_bits`: AVX-512 schedules on a 128-bit ISA ran slower than the
    rule schedules), and only databases in the data layout the target builds in (other layouts'
    workloads are other functions).
    """
    me = target_identity(target_name)
    is_gpu = me.arch == "cuda"
    layout = target_data_layout(target_name)
    found = []
    for folder, identity in nearest_devices(me, exclude=target_dir(target_name)):
        if (identity.arch == "cuda") != is_gpu:
            continue
        tuned_in = database_data_layout(folder)
        if tuned_in not in (None, layout):
            log.debug("%s: tuned in %s, %s builds %s: not borrowed", folder.name, tuned_in, target_name, layout)
            continue
        if None not in (me.vector_bits, identity.vector_bits) and me.vector_bits != identity.vector_bits:
            log.debug("%s: %d-bit vectors, %s has %d: its schedules are not borrowed", folder.name,
                      identity.vector_bits, target_name, me.vector_bits)
            continue
        resolved = resolve_database(folder)
        if resolved is not None:
            found.append((folder, resolved))
        if len(found) == limit:
            break
    return found


def task_best_times(folder: str | Path) -> tuple[str | None, dict[str, float]]:
    """(database sha256 the times belong to, {task structural hash: fastest measured seconds}) of a tuned folder.

    ``tune`` keeps each task's best time in tune_state.json as it tunes; empty when the folder has
    no state file or it is unreadable.
    """
    try:
        state = json.loads((Path(folder) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None, {}
    if not isinstance(state, dict) or not isinstance(state.get("tasks"), dict):
        return None, {}
    times = {h: float(t["best_s"]) for h, t in state["tasks"].items()
             if isinstance(t, dict) and isinstance(t.get("best_s"), (int, float)) and t["best_s"] > 0}
    return state.get("database_sha256"), times


def best_records(database_dir: str | Path) -> Path:
    """A copy of the database with only each workload's fastest record, cached by content.

    What a build borrows from another device is one schedule per workload, but TVM parses the
    whole JSON database to answer (half a minute per build for a 40-60 MB database of every
    trial); the fastest records are about 2 % of it. "Fastest" is TVM's own order (mean run time),
    failed runs never count. The copy lives in ``<cache>/databases/best-<sha256 of the
    database>/``, made atomically (temp folder, rename): concurrent or killed callers never see half
    of it.
    """
    path = Path(database_dir)
    dest = cache_root() / "databases" / f"best-{database_hash(path)[:20]}"
    if (dest / RECORD_FILE).is_file():
        return dest
    best: dict[int, tuple[float, bytes]] = {}
    with open(path / RECORD_FILE, "rb") as f:
        for line in f:
            try:
                index, (_, run_secs, _, _) = json.loads(line)
                secs = sum(float(s) for s in run_secs) / len(run_secs)
            except (ValueError, TypeError):  # a torn or foreign line: not a schedule to borrow
                continue
            if secs < FAILED_RUN_SECS and (index not in best or secs < best[index][0]):
                best[index] = (secs, line.rstrip(b"\n"))
    workloads = (path / WORKLOAD_FILE).read_bytes().splitlines()
    kept = sorted(i for i in best if 0 <= i < len(workloads))
    renumber = {old: new for new, old in enumerate(kept)}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".best-", dir=dest.parent))
    try:
        (tmp / WORKLOAD_FILE).write_bytes(b"".join(workloads[i] + b"\n" for i in kept))
        (tmp / RECORD_FILE).write_bytes(b"".join(
            b"[%d," % renumber[i] + best[i][1].split(b",", 1)[1] + b"\n" for i in kept))
        os.rename(tmp, dest)
    except OSError:  # another process finished first: its copy is identical
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("best records of %s: %d of its workloads, in %s", path, len(kept), dest)
    return dest


def current_transfer_hashes(target_name: str) -> list[str]:
    """sha256 of each database a build for ``target_name`` borrows from now (:func:`transfer_databases`)."""
    return [database_hash(d) for _, d in transfer_databases(target_name)]


def current_database_hash(target_name: str) -> str | None:
    """sha256 of the target's database in ``tuning_logs/<target>/``; None when it has none (untuned)."""
    d = default_database(target_name)
    return database_hash(d) if d is not None else None


def unpack_in_place(database_dir: str | Path) -> bool:
    """Turn a packed folder into plain files (tuning appends to them); the stale ``.gz`` files are removed."""
    path = Path(database_dir)
    if not is_packed(path):
        return False
    _gunzip_into(path, path)
    for name in DATABASE_FILES:
        (path / (name + PACKED)).unlink()
    log.info("unpacked database %s for tuning (pack it again with 'ofa-deploy tune --pack')", path)
    return True


def pack_database(database_dir: str | Path) -> str:
    """Gzip both files in place (deterministic bytes: no name or time in the header), remove the plain ones.

    Returns the database hash, which packing does not change. A killed tuning chunk's records are merged first.
    """
    merge_chunk(database_dir)
    path = check_database_dir(database_dir)
    before = database_hash(path)
    for name in DATABASE_FILES:
        with open(path / name, "rb") as src, atomic_path(path / (name + PACKED)) as tmp:
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                       compresslevel=9) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    if _content_hash(lambda name: gzip.decompress((path / (name + PACKED)).read_bytes())) != before:
        raise OfaDeployError(f"packing {path} changed its content; plain files kept")
    for name in DATABASE_FILES:
        (path / name).unlink()
    return before


def check_database_dir(database_dir: str | Path) -> Path:
    """The directory, if it holds a MetaSchedule JSON database; else OfaDeployError.

    Checked here because TVM's JSONDatabase silently *creates* empty files in a wrong
    directory, and a build would then claim a database it never used.
    """
    path = Path(database_dir)
    missing = [name for name in DATABASE_FILES if not (path / name).is_file()]
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
    return _content_hash(lambda name: (path / name).read_bytes())


def _content_hash(read: Callable[[str], bytes]) -> str:
    """sha256 over both files' names and contents, ``read(name)`` giving the (unpacked) bytes."""
    digest = hashlib.sha256()
    for name in sorted(DATABASE_FILES):
        digest.update(name.encode() + b"\0")
        digest.update(read(name))
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


def _switched_off(target: dict) -> list[str]:
    """The ``-feature`` entries of a target dict's mattr, sorted (TVM records keep mattr as a list)."""
    mattr = target.get("mattr") or []
    return sorted(m for m in ([mattr] if isinstance(mattr, str) else mattr) if str(m).startswith("-"))


def check_database_target(database_dir: str | Path, tvm_target: dict, target_name: str) -> None:
    """Refuse a database tuned for another target (TVM applies records regardless of target).

    Compares kind, mcpu, CUDA arch, the triple's CPU architecture where both sides state them, and
    the features switched off (``-mattr=-avx,...``: an AVX-512 database is not a 128-bit target's).
    For ``x86-host`` the registry's mcpu is a guess from /proc/cpuinfo (the build uses LLVM's
    answer), so an mcpu difference there is only logged.
    """
    notes: list[str] = []  # logged only when the database is not refused (one message, not two)
    for recorded in database_targets(database_dir):
        if _switched_off(recorded) != _switched_off(tvm_target):
            raise OfaDeployError(
                f"database {database_dir} was tuned with -mattr={','.join(_switched_off(recorded)) or '(none off)'}, "
                f"but target {target_name} has -mattr={','.join(_switched_off(tvm_target)) or '(none off)'}: other "
                "vector code; use that target's own tuning_logs directory")
        for key in _TARGET_KEYS:
            if key in recorded and key in tvm_target and recorded[key] != tvm_target[key]:
                if key == "mcpu" and host_variant(target_name) is not None:
                    notes.append(f"database {database_dir} was tuned for -mcpu={recorded[key]}; x86-host is "
                                 f"{tvm_target[key]} (guess)")
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
    for note in dict.fromkeys(notes):
        log.warning("%s", note)


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


# ------------------------------------------------------------------ a tuning chunk's slice of the database

SLICE_FILE = "slice.json"  # in CHUNK_DIR, written last: the slice is complete and what it copied


def _workload_hash(line: bytes) -> str:
    """The structural hash a workload line starts with (``["<hash>", ...]``)."""
    return line[2:line.index(b'"', 2)].decode()


def _record_index(line: bytes) -> int:
    """The workload index a record line starts with (``[<index>, ...``)."""
    return int(line[1:line.index(b",")])


def slice_for_chunk(database_dir: str | Path, task_hashes: list[str]) -> Path:
    """``<database>/.chunk/``: the part of the database one tuning chunk needs, for TVM to open quickly.

    TVM replays every record's trace when it opens a JSON database: ~3 ms a record, 31 s for the
    10,000 records of one CPU's database, paid by every chunk (BENCHMARKS "Tuning chunk start-up").
    A chunk needs all records of its own tasks (the search starts from them and never re-measures
    them) and, for seeds from structural siblings, each other workload's best record: the slice
    holds exactly that, every workload line, and the cost model. MetaSchedule appends the chunk's
    records to the slice; :func:`merge_chunk` moves them into the database when the chunk ends
    (and, after a kill, when the next run starts), so nothing measured is lost.
    """
    path, chunk = Path(database_dir), Path(database_dir) / CHUNK_DIR
    if chunk.exists():
        merge_chunk(path)  # a leftover of a killed run: its records first
    wanted = set(task_hashes)
    workloads = (path / WORKLOAD_FILE).read_bytes().splitlines() if (path / WORKLOAD_FILE).is_file() else []
    own = {i for i, line in enumerate(workloads) if line.strip() and _workload_hash(line) in wanted}
    kept: list[bytes] = []
    best: dict[int, tuple[float, bytes]] = {}
    if (path / RECORD_FILE).is_file():
        for line in (path / RECORD_FILE).read_bytes().splitlines():
            if not line.strip():
                continue
            index, (_, run_secs, _, _) = json.loads(line)
            if index in own:
                kept.append(line)
                continue
            secs = sum(float(s) for s in run_secs) / len(run_secs) if run_secs else FAILED_RUN_SECS
            if secs < FAILED_RUN_SECS and (index not in best or secs < best[index][0]):
                best[index] = (secs, line)
    kept += [line for _, line in best.values()]
    chunk.mkdir()
    (chunk / WORKLOAD_FILE).write_bytes(b"".join(line + b"\n" for line in workloads))
    (chunk / RECORD_FILE).write_bytes(b"".join(line + b"\n" for line in kept))
    if (path / COST_MODEL_FILE).is_file():
        shutil.copyfile(path / COST_MODEL_FILE, chunk / COST_MODEL_FILE)
    with atomic_path(chunk / SLICE_FILE) as tmp:
        tmp.write_text(json.dumps({"workloads": len(workloads), "records": len(kept)}))
    return chunk


def merge_chunk(database_dir: str | Path) -> int:
    """Move what a chunk measured from ``<database>/.chunk/`` into the database, then drop the slice; records moved.

    New workload lines are appended (or matched by hash to ones the database holds), new record
    lines follow with their workload index renumbered, and the chunk's cost model replaces the
    database's. A slice without its ``slice.json`` was never handed to a worker and is dropped.
    Merging twice (a kill between the append and the slice's removal) appends nothing the second time.
    """
    path, chunk = Path(database_dir), Path(database_dir) / CHUNK_DIR
    if not chunk.is_dir():
        return 0
    try:
        copied = json.loads((chunk / SLICE_FILE).read_text())
    except (OSError, ValueError):
        shutil.rmtree(chunk, ignore_errors=True)
        return 0
    repair_database(chunk)  # the worker may have died mid-append
    mine = (chunk / WORKLOAD_FILE).read_bytes().splitlines() if (chunk / WORKLOAD_FILE).is_file() else []
    records = (chunk / RECORD_FILE).read_bytes().splitlines() if (chunk / RECORD_FILE).is_file() else []
    # New: not a line of the database (the slice's copies are verbatim; a record's body after its
    # workload index identifies it), so a merge interrupted after its append never appends twice.
    known = set()
    if (path / RECORD_FILE).is_file():
        known = {line.split(b",", 1)[1] for line in (path / RECORD_FILE).read_bytes().splitlines() if line.strip()}
    new_records = [line for line in records if line.strip() and line.split(b",", 1)[1] not in known]
    if new_records:
        theirs = (path / WORKLOAD_FILE).read_bytes().splitlines() if (path / WORKLOAD_FILE).is_file() else []
        index_of = {_workload_hash(line): i for i, line in enumerate(theirs) if line.strip()}
        added: list[bytes] = []
        renumber: dict[int, int] = {}
        for i in sorted({_record_index(line) for line in new_records}):
            if i < copied["workloads"]:
                renumber[i] = i  # copied from the database as is: the same index there
                continue
            key = _workload_hash(mine[i])
            if key not in index_of:
                index_of[key] = len(theirs) + len(added)
                added.append(mine[i])
            renumber[i] = index_of[key]
        with open(path / WORKLOAD_FILE, "ab") as f:
            f.write(b"".join(line + b"\n" for line in added))
        with open(path / RECORD_FILE, "ab") as f:
            f.write(b"".join(b"[%d," % renumber[_record_index(line)] + line.split(b",", 1)[1] + b"\n"
                             for line in new_records))
    if (chunk / COST_MODEL_FILE).is_file():
        os.replace(chunk / COST_MODEL_FILE, path / COST_MODEL_FILE)
    (chunk / SLICE_FILE).unlink()  # first: a slice without it is never merged again
    shutil.rmtree(chunk, ignore_errors=True)
    return len(new_records)
