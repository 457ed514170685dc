"""``ofa-deploy tune``: MetaSchedule + XGBoost over the space's distinct tasks (parent side, no TVM).

What gets tuned: the fused tasks of every workload of the space at the chosen resolutions
(ofa_deploy/workloads.py: stem, 90 block variants and head per resolution), merged across
workloads, so a task shared by many blocks and subnets is tuned once. At 224 that is 92
workloads -> 440 extracted tasks -> ~187 distinct ones. Each resolution adds its own set: the
cost is linear in the number of resolutions.

How (every step survives a kill):

1. Lock the database directory (one tuning run per database), repair a torn last line left by a
   kill -9 (tuning_logs.database.repair_database), and refuse a database or tune_state.json of another
   target (TVM would apply foreign records silently).
2. ``tune_plan`` worker: extract + deduplicate the tasks (cached plan file), verify the
   database's stored workload hashes, count each task's records.
3. Tune the tasks still short of ``trials_per_task`` records, largest weighted FLOPs first, a
   few at a time (one worker process per chunk: MetaSchedule keeps state in its process, and a
   fresh process bounds what a crash can take). The worker opens a slice of the database (its
   tasks' records and every other workload's best: TVM replays each record it opens, 31 s for a
   whole CPU database; tuning_logs.database.slice_for_chunk), records are appended to the slice
   as they are measured and merged into the database when the chunk ends (after a kill: when the
   next run starts). A finished chunk marks its tasks done in ``tune_state.json`` (atomic), so a task that
   MetaSchedule finishes with fewer trials (a reshape has one schedule) is not retried forever.
4. ``--budget-minutes``: before each chunk, the measured seconds per trial and per chunk decide
   whether it fits; the chunk shrinks to what fits, or the run stops and says what is left.

A killed run loses nothing measured: rerunning continues with the tasks not yet done (tasks of
the interrupted chunk are tuned again for their missing trials).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from ofa_deploy.atomic import sweep_stale, write_json
from ofa_deploy.cache import cache_root
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.tuning_logs.database import (CACHE_PROTOCOLS, best_records, check_database_target, database_cache,
                                             database_data_layout, database_hash, default_database, file_sha256,
                                             merge_chunk, repair_database, slice_for_chunk, transfer_databases,
                                             unpack_in_place)
from ofa_deploy.tuning_logs.folders import measuring_identity, target_dir
from ofa_deploy.tuning_logs.identity import claim_folder
from ofa_deploy.tuning_logs.layout import LOCK_FILE, RECORD_FILE, STATE_FILE

from .isolate import run_worker, run_worker_polling
from .toolchain import installed_tvm_version

log = logging.getLogger(__name__)

# Used for the first estimate until this machine has measured its own (kept in tune_state.json).
ASSUMED_SECONDS_PER_TRIAL = 1.5
ASSUMED_CHUNK_OVERHEAD_S = 30.0  # measured 7-23 s on the 2-core dev machine under load
PLAN_TIMEOUT_S = 3600.0
POLL_S = 1.0


@dataclass(frozen=True)
class TuneSettings:
    """MetaSchedule knobs of one tuning run (defaults sized for a small CPU)."""

    num_trials_per_iter: int = 8  # candidates measured per round: small, so every task is measured early
    population_size: int = 64  # evolutionary search population (MetaSchedule: 512, ~10x the search cost)
    genetic_num_iters: int = 2  # generations per round (MetaSchedule: 4)
    init_min_unmeasured: int = 16  # random candidates in the first population (MetaSchedule: 50)
    builder_timeout_s: float = 120.0  # per candidate; a slower build is a failed trial
    runner_timeout_s: float = 60.0  # per candidate (the RPC session timeout with --rpc)
    cache: str | None = None  # how candidates are timed: "cold" (caches flushed of all but the kernel's input
    # before each sample, one call per sample: its weights and output come from memory, as in a network) or
    # "warm" (MetaSchedule's default: the kernel rerun with everything cached, which ranks the big early
    # kernels by a speed they never reach in a network). None: the database's own, "cold" for a new one
    # (CPU targets; GPUs are timed warm)
    cold_samples: int = 10  # with "cold": timing samples per candidate (one call each)
    number: int = 3  # with "warm": runs per timing sample ...
    repeat: int = 2  # ... samples per candidate ...
    min_repeat_ms: int = 40  # ... each at least this long (short kernels repeat more)
    seed: int = 0  # seeds the search (forked per task)
    search_threads: int | None = None  # XGBoost / search threads; None: all cores
    warm_start: int = 4  # seed schedules measured first for a new task (other devices' records, siblings),
    # and once for each task tuned here already (the polish before the rounds); 0: neither. On CPUs a new
    # task measures the rule schedule first in any case (one trial): the floor its best never falls below
    first_round: int = 8  # trials every task gets before any task gets more (rounds then double)
    converged_gain: float = 0.01  # a round that improves a task's best by less than this stops the task

    def __post_init__(self) -> None:
        for name in ("num_trials_per_iter", "population_size", "genetic_num_iters", "number", "repeat",
                     "cold_samples"):
            if getattr(self, name) < 1:
                raise OfaDeployError(f"tune settings: {name} must be >= 1, got {getattr(self, name)}")
        if self.cache not in (None, *CACHE_PROTOCOLS):
            raise OfaDeployError(f"--cache must be one of {', '.join(CACHE_PROTOCOLS)}; got {self.cache!r}")


@dataclass
class TuneReport:
    """What one ``tune_target`` call did."""

    target: str
    database_dir: str
    workloads: int  # ONNX workloads the tasks were extracted from
    extracted_tasks: int  # tasks over all workloads, before merging identical ones
    tasks_total: int  # distinct tasks
    tasks_skipped: int  # already tuned before this run (records or tune_state.json)
    tasks_tuned: int  # tuned in this run
    tasks_failed: int  # in a chunk whose worker failed (rerun to retry)
    tasks_left: int  # not started: the budget ran out (rerun to continue)
    trials: int  # records added in this run (failed candidates included: they cost the same)
    trials_failed: int  # candidates that failed to build or run (recorded as such, never applied)
    seconds: float
    estimate_s: float  # the estimate made before tuning started
    seconds_per_trial: float | None  # measured in this run: tuning time / trials
    chunk_overhead_s: float | None  # measured in this run: worker start, imports, task setup per chunk
    database_sha256: str | None
    stopped_by_budget: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Task:
    index: int
    name: str
    hash: str
    flops: float
    weight: int
    workloads: tuple[str, ...]
    remaining: int  # trials to run for this task in the current round (or in the run, before rounds)
    records: int = 0  # this device's records of the task so far
    best_s: float | None = None  # its best measured seconds so far (None: never measured)

    @property
    def priority(self) -> float:
        """Its share of the space's latency: how often it occurs times how long it takes.

        Untimed tasks are guessed at 50 GFLOP/s, so they rank by weighted FLOPs among themselves.
        """
        return self.weight * (self.best_s if self.best_s is not None else self.flops / 50e9)


@contextlib.contextmanager
def _locked(database_dir: Path) -> Iterator[None]:
    """One tuning run per database directory (the lock dies with the process, even on kill -9)."""
    import fcntl

    database_dir.mkdir(parents=True, exist_ok=True)
    with open(database_dir / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise OfaDeployError(f"database {database_dir} is being tuned by another ofa-deploy tune "
                                 f"(pid {f.read().strip() or '?'}); wait for it or use another --database") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except ValueError:
        raise OfaDeployError(f"{path}: not JSON (it is written atomically, so it was edited or damaged); "
                             "delete it to rebuild it from the database") from None
    if not isinstance(state, dict):
        raise OfaDeployError(f"{path}: expected a JSON object; delete it to rebuild it from the database")
    for key, kind in (("tasks", dict), ("measured", dict), ("target", str), ("tuned_resolutions", list)):
        if key in state and not isinstance(state[key], kind):
            raise OfaDeployError(f"{path}: field {key!r} is a JSON {type(state[key]).__name__}, expected "
                                 f"{'an object' if kind is dict else 'a ' + kind.__name__}; delete it to rebuild "
                                 "it from the database")
    tasks = state.get("tasks", {})
    if any(not isinstance(t, dict) for t in tasks.values()):
        raise OfaDeployError(f"{path}: field 'tasks' holds a non-object entry; delete it to rebuild it from the "
                             "database")
    return state


def _check_device(spec: Any, rpc: Any) -> None:
    """Tuning measures every candidate: the target must run here, or be reached through --rpc."""
    if spec.analytic_only:
        raise OfaDeployError(f"--target {spec.name} is analytic-only ({spec.description}): there is no code to "
                             "tune; tune its host CPU target instead")
    if rpc is not None:
        if not rpc.is_tracker:
            raise OfaDeployError(f"--rpc {rpc}: tuning needs an RPC tracker and a device key (HOST:PORT:KEY), "
                                 "not a server address: MetaSchedule requests the device from the tracker")
        return
    machine = platform.machine()
    if spec.arch != machine:
        raise OfaDeployError(f"--target {spec.name} runs on {spec.arch} and this machine is {machine}: tuning "
                             "measures on the device, so pass --rpc HOST:PORT:KEY (an RPC tracker with the board "
                             "registered); emulated timings are never a speed")
    if spec.kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise OfaDeployError(f"--target {spec.name} needs a CUDA GPU to measure on and this machine has none; "
                                 "tune on the GPU machine or pass --rpc HOST:PORT:KEY")


def _workload_models(space: str, resolutions: tuple[int, ...], keys: tuple[str, ...] | None,
                     n_classes: int | None, progress: bool | None, data_layout: str) -> list[dict[str, Any]]:
    """The ONNX files (exported once, cached) of the workloads to tune.

    The whole space: its blocks, stem and head (NCHW); in NHWC the cover subnets instead, whose
    tasks are the networks' own (:func:`ofa_deploy.workloads.cover_nets`). ``keys`` picks any of
    both kinds (partial runs, tests); a block's edges are in ``data_layout``, as inside a network
    (an NCHW-edged block on an NHWC target would tune layout-transform tasks no network runs).
    """
    from ofa_deploy.workloads import cover_nets, export_workloads, space_workloads

    blocks, nets = space_workloads(space, resolutions, n_classes, data_layout), cover_nets(space, resolutions)
    workloads = nets if data_layout == "NHWC" else blocks
    if keys is not None:
        known = {w.key for w in blocks + nets}
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise OfaDeployError(f"workload {unknown[0]!r} is not a workload of {space} at {list(resolutions)}; "
                                 f"allowed: e.g. {', '.join(sorted(known)[:4])}, ...")
        workloads = [w for w in blocks + nets if w.key in keys]
    models = []
    for w in tqdm(workloads, desc="export workloads", unit="model", file=sys.stderr, leave=False,
                  disable=None if progress is None else not progress):
        path = export_workloads([w], space, n_classes)[w.key]
        models.append({"key": w.key, "onnx_path": str(path), "input_shape": list(w.input_shape)})
    return models


def _plan_key(models: list[dict[str, Any]], spec: Any) -> str:
    """Identifies a plan: the exact ONNX files, the target, its data layout and the TVM version."""
    ident = {"models": [[m["key"], file_sha256(m["onnx_path"]), m["input_shape"]] for m in models],
             "target": spec.name, "tvm_target": spec.tvm_target_with_host(), "tvm": installed_tvm_version(),
             "data_layout": spec.data_layout}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


class _RecordCounter:
    """Counts records appended to the database since it was created (for the progress bar)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.is_file() else 0

    def new_lines(self) -> int:
        if not self.path.is_file():
            return 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.count(b"\n")


def _run_watched(request: dict[str, Any], what: str, timeout: float, env: dict[str, str],
                 counter: _RecordCounter, on_records: Any) -> dict[str, Any]:
    """``run_worker`` while new records are reported every POLL_S seconds."""
    return run_worker_polling(request, what=what, timeout=timeout, env=env, every_s=POLL_S,
                              poll=lambda: on_records(counter.new_lines()))


def _fit(tasks: list[_Task], seconds_left: float, spt: float, overhead: float) -> int:
    """How many of ``tasks`` (in order) one chunk can tune within ``seconds_left``."""
    used, n = overhead, 0
    for t in tasks:
        used += t.remaining * spt
        if used > seconds_left:
            break
        n += 1
    return n


def _fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def tune_target(target: str, *, database_dir: str | Path | None = None, resolutions: tuple[int, ...] = (224,),
                trials_per_task: int = 32, budget_minutes: float | None = None, rpc: str | None = None,
                space: str | None = None, chunk_tasks: int = 16, n_classes: int | None = None,
                keys: tuple[str, ...] | None = None, settings: TuneSettings | None = None,
                progress: bool | None = None) -> TuneReport:
    """Tune ``target``'s database on the space's distinct tasks; resumable (see the module docstring).

    Args:
        target: registry name, tag or TVM string; must run here or be reached through ``rpc``.
        database_dir: default ``tuning_logs/<target>/``, which ``compile`` picks up by itself.
        resolutions: the resolutions whose workloads are tuned (cost is linear in their number).
        trials_per_task: measured candidates per distinct task.
        budget_minutes: stop launching work that would not finish within this wall time.
        rpc: ``HOST:PORT:KEY`` of an RPC tracker with the device registered under KEY.
        chunk_tasks: tasks per worker process (larger: less start-up cost per task).
        keys: only these workloads (``"r128/head"``, ...): tests and partial runs.
        progress: tqdm bars (None: only on a terminal).

    Raises:
        OfaDeployError: unknown target, bad setting, unreachable tracker, locked, corrupted or
        foreign database (one line each).
    """
    from ofa_deploy.search_space import DEFAULT_SPACE
    from ofa_deploy.targets import get_target

    from .rpc import RpcSpec, check_reachable
    from .toolchain import linker_for

    started = time.monotonic()
    spec = get_target(target)
    space = space or DEFAULT_SPACE
    settings = settings or TuneSettings()
    if trials_per_task < 1:
        raise OfaDeployError(f"--trials must be >= 1 (measured candidates per task), got {trials_per_task}")
    if chunk_tasks < 1:
        raise OfaDeployError(f"--chunk-tasks must be >= 1, got {chunk_tasks}")
    if budget_minutes is not None and budget_minutes <= 0:
        raise OfaDeployError(f"--budget-minutes must be > 0, got {budget_minutes}")
    rpc_spec = RpcSpec.parse(rpc) if rpc else None
    _check_device(spec, rpc_spec)
    if rpc_spec is not None:
        check_reachable(rpc_spec)  # bounded connect timeout and retries, one clear line
    linker = linker_for(spec.cross_compiler)
    env: dict[str, str] = {}
    if spec.kind == "cuda":
        from .toolchain import find_nvcc

        env = {"PATH": str(Path(find_nvcc()).parent) + os.pathsep + os.environ.get("PATH", ""),
               "TVM_CUDA_COMPILE_MODE": "nvcc"}

    if database_dir is None:
        database_dir = target_dir(spec.name)
    db = Path(database_dir).resolve()
    budget_s = budget_minutes * 60 if budget_minutes is not None else None
    identity = measuring_identity(spec.name, rpc_spec.key if rpc_spec else None)
    transfer = seed_databases(spec.name, db) if settings.warm_start else []
    settings = dataclasses.replace(settings, cache=cache_protocol(spec, db, settings.cache))
    job = _Job(spec, db, tuple(resolutions), trials_per_task, budget_s, rpc_spec, space, chunk_tasks, n_classes, keys,
               settings, progress, linker, env, started, identity, transfer)
    with _locked(db):
        return _tune_locked(job)


def seed_databases(target_name: str, db: Path) -> list[tuple[str, str]]:
    """(label, folder) of the databases a new task's seed schedules come from, best source first.

    This device's own folder when the run tunes into another one (a fresh folder, or a re-tune
    with cold caches of a database timed warm: the same CPU's best schedules are the best start
    there is, and the run re-times them its own way), then the nearest other devices'.
    """
    found = []
    own = target_dir(target_name)
    if own.resolve() != db.resolve():
        own_db = default_database(target_name)
        if own_db is not None:
            found.append((own.name, str(best_records(own_db))))
    return found + [(label, str(path)) for label, path in transfer_databases(target_name)
                    if Path(path).resolve() != db.resolve()]


def cache_protocol(spec: Any, db: Path, requested: str | None) -> str:
    """How this run times candidates (:attr:`TuneSettings.cache`): the database's own protocol, else the request,
    else ``cold``; GPUs are timed ``warm`` (the flush is a CPU one).

    Raises:
        OfaDeployError: the request differs from the protocol of the database's records (mixing the
        two in one task would rank warm timings above cold ones of the same schedule), or asks a
        GPU for ``cold``.
    """
    if spec.kind == "cuda":
        if requested == "cold":
            raise OfaDeployError(f"--cache cold: GPU targets ({spec.name}) are timed warm (the flush is a CPU one); "
                                 "allowed: warm")
        return "warm"
    existing = database_cache(db)
    if existing is not None and requested not in (None, existing):
        raise OfaDeployError(f"--cache {requested}: database {db} was timed with {existing} caches (tune_state.json "
                             f"'cache'), and one task's records must all be timed one way. Continue it with --cache "
                             f"{existing}, or tune into a new folder (--database DIR)")
    return existing or requested or "cold"


@dataclass(frozen=True)
class _Job:
    """What one ``tune_target`` run was asked to do, checked: the inputs every step below reads."""

    spec: Any  # TargetSpec
    db: Path  # the database folder (locked while the run lasts)
    resolutions: tuple[int, ...]
    trials: int  # per distinct task
    budget_s: float | None
    rpc: Any  # RpcSpec or None (tune here)
    space: str
    chunk_tasks: int
    n_classes: int | None
    keys: tuple[str, ...] | None
    settings: TuneSettings
    progress: bool | None
    linker: str
    env: dict[str, str]  # added to each worker's environment
    started: float  # time.monotonic() when the run started: the budget counts from there
    identity: Any  # DeviceIdentity of the device measured on: the folder must be (or become) its
    transfer: list[tuple[str, str]]  # (label, folder) of other devices' databases: warm-start seeds

    @property
    def state_path(self) -> Path:
        return self.db / STATE_FILE

    @property
    def runner_kind(self) -> str:
        """Where candidates are measured: the measured rates in tune_state.json are kept per runner."""
        return f"rpc:{self.rpc.key}" if self.rpc else "local"

    @property
    def log_dir(self) -> Path:
        return cache_root() / "tune_logs" / self.spec.name


@dataclass
class _Rates:
    """Seconds per trial and per chunk (worker start-up, imports, task setup) the estimate and budget use."""

    spt: float
    overhead: float
    basis: str  # "measured here" (tune_state.json of an earlier run) or "assumed"


@dataclass
class _Run:
    """What the chunks of this run did."""

    # trials, tuning and start-up seconds of the chunks that worked: the rates this run measured
    timing: dict[str, Any] = field(default_factory=lambda: {"trials": 0, "tune_seconds": 0.0, "overhead_seconds": 0.0,
                                                             "chunks": 0})
    trials_added: int = 0  # every record of this run (failed candidates too: they cost the same)
    trials_failed: int = 0
    tuned: int = 0  # tasks
    tuned_tasks: set[str] = field(default_factory=set)  # their hashes (a task can be in several rounds)
    failed: int = 0  # tasks
    stopped: bool = False  # by the budget


def _tune_locked(job: _Job) -> TuneReport:
    """The run, with its database locked: open the database, plan, estimate, tune chunk by chunk, report."""
    state = _open_database(job)
    models, plan, plan_path = _plan(job)
    tasks, pending = _pending_tasks(plan, state, job.trials)
    skipped = len(tasks) - len(pending)
    rates = _rates(state, job.runner_kind)
    total_trials, estimate = _announce(job, len(models), plan, tasks, pending, rates)
    state.update({"target": job.spec.name, "tvm_target": job.spec.tvm_target, "data_layout": job.spec.data_layout,
                  "cache": job.settings.cache, "space": job.space,
                  "settings": {"trials_per_task": job.trials, **dataclasses.asdict(job.settings)}})
    run = _Run()
    if _polish(job, state, tasks, plan, plan_path, rates, run):
        tasks, pending = _pending_tasks(plan, state, job.trials)  # polish can reopen a converged task
        total_trials = sum(t.remaining for t in pending)
    if not run.stopped:
        pending = _run_chunks(job, state, tasks, pending, plan_path, rates, total_trials, run)
    if run.stopped:
        left_trials = sum(t.remaining for t in pending)
        left_s = left_trials * rates.spt + -(-len(pending) // job.chunk_tasks) * rates.overhead
        log.warning("budget reached: %d tasks (%d trials, about %s) left; rerun the same command to continue",
                    len(pending), left_trials, _fmt_duration(left_s))
    db = job.db
    timing = run.timing
    return TuneReport(
        target=job.spec.name, database_dir=str(db), workloads=len(models), extracted_tasks=plan["extracted_tasks"],
        tasks_total=len(tasks), tasks_skipped=skipped, tasks_tuned=run.tuned, tasks_failed=run.failed,
        tasks_left=len(pending) if run.stopped else 0, trials=run.trials_added, trials_failed=run.trials_failed,
        seconds=round(time.monotonic() - job.started, 1), estimate_s=round(estimate, 1),
        seconds_per_trial=round(timing["tune_seconds"] / timing["trials"], 3) if timing["trials"] else None,
        chunk_overhead_s=round(timing["overhead_seconds"] / timing["chunks"], 1) if timing["chunks"] else None,
        database_sha256=database_hash(db) if (db / RECORD_FILE).is_file() else None, stopped_by_budget=run.stopped)


def _open_database(job: _Job) -> dict[str, Any]:
    """tune_state.json, once the database is safe to append to; refuses another target's database.

    A shipped (gzipped) database is unpacked (tuning appends to plain files), a torn last line of a
    killed run is dropped, and records or a state file of another target are refused: TVM would
    apply them silently.
    """
    spec, db = job.spec, job.db
    claim_folder(db, job.identity, "a tuning database")
    state = _read_state(job.state_path)
    if state.get("target") not in (None, spec.name):
        raise OfaDeployError(f"database {db} belongs to target {state['target']} (see {STATE_FILE}), not "
                             f"{spec.name}: use that target's own tuning_logs directory")
    layout = database_data_layout(db)
    if layout not in (None, spec.data_layout):
        raise OfaDeployError(f"database {db} was tuned in {layout} and {spec.name} is now built and tuned in "
                             f"{spec.data_layout}: its records can never match. Move the folder away (it stays "
                             "valid for builds of that layout in an older ofa-deploy) and tune again")
    unpack_in_place(db)
    repair_database(db)
    merged = merge_chunk(db)  # what a killed run's last chunk measured
    if merged:
        log.warning("%s: merged %d records measured by an interrupted tuning chunk", db, merged)
    if (db / RECORD_FILE).is_file():
        check_database_target(db, spec.tvm_target, spec.name)
    return state


def _plan(job: _Job) -> tuple[list[dict[str, Any]], dict[str, Any], Path]:
    """(workload models, plan, plan file): the ``tune_plan`` worker's distinct tasks and their records so far.

    The plan file is cached by the exact ONNX files, target and TVM version; the worker also checks
    the database's stored workload hashes (a corrupted line is refused here, naming it).
    """
    spec, db = job.spec, job.db
    models = _workload_models(job.space, job.resolutions, job.keys, job.n_classes, job.progress, spec.data_layout)
    plan_key = _plan_key(models, spec)
    plan_path = cache_root() / "tune_plans" / f"{spec.name}-{plan_key[:20]}.json"
    sweep_stale(plan_path.parent)  # plan temporaries of a killed run
    sweep_stale(db)  # a cost model half-saved by a killed run
    plan = run_worker({"op": "tune_plan", "die_with_parent": True, "parent_pid": os.getpid(), "models": models,
                       "input_name": "input", "plan_key": plan_key, "data_layout": spec.data_layout,
                       "plan_path": str(plan_path), "tvm_target": spec.tvm_target_with_host(),
                       "target_name": spec.name, "database_dir": str(db)},
                      what=f"extracting {spec.name} tuning tasks", timeout=PLAN_TIMEOUT_S, env=job.env)
    if plan["bad_workload_lines"]:
        raise OfaDeployError(f"{db}: corrupted MetaSchedule database: the stored structural hash of workload "
                             f"line(s) {plan['bad_workload_lines'][:5]} does not match the module; restore the "
                             "files or delete the database directory")
    return models, plan, plan_path


def workload_tasks(target: str, space: str, resolutions: tuple[int, ...], n_classes: int | None = None,
                   keys: set[str] | None = None) -> dict[str, dict[str, int]]:
    """The fused tasks of each block workload (stem, blocks, head; ``keys``: only these) as ``target`` builds them.

    ``{workload key: {task structural hash: weight}}``, the hashes being tune_state.json's task
    keys: what ``profile --adapt`` needs to re-scale another device's block tables by the tasks'
    best times (:mod:`ofa_deploy.latency.rescale`). One TVM task extraction (about 1.5 min for the
    92 workloads at one resolution on 2 cores), cached by the exact ONNX files, target and TVM.
    """
    from ofa_deploy.targets import get_target
    from ofa_deploy.workloads import export_workloads, space_workloads

    spec = get_target(target)
    wanted = [w for w in space_workloads(space, resolutions, n_classes, spec.data_layout) if keys is None or w.key in keys]
    paths = export_workloads(wanted, space, n_classes)
    models = [{"key": w.key, "onnx_path": str(paths[w.key]), "input_shape": list(w.input_shape)} for w in wanted]
    path = cache_root() / "task_maps" / f"{spec.name}-{_plan_key(models, spec)[:20]}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    reply = run_worker({"op": "workload_tasks", "die_with_parent": True, "parent_pid": os.getpid(), "models": models,
                        "input_name": "input", "data_layout": spec.data_layout,
                        "tvm_target": spec.tvm_target_with_host(), "target_name": spec.name},
                       what=f"listing the tuning tasks of {len(models)} {spec.name} workloads", timeout=PLAN_TIMEOUT_S)
    write_json(path, reply["tasks"])
    return reply["tasks"]


def _done_entry(task: _Task, trials: int, *, converged: bool = False) -> dict[str, Any]:
    """A task's record in tune_state.json: done at ``trials`` per task, or stopped early as converged."""
    return {"name": task.name, "flops": task.flops, "weight": task.weight, "trials": trials,
            "records": task.records, "best_s": task.best_s, "converged": converged}


def _progress_entry(task: _Task) -> dict[str, Any]:
    """A task still being tuned: how far it got (records, best time), for the next round or run."""
    return {"name": task.name, "flops": task.flops, "weight": task.weight, "trials": 0,
            "records": task.records, "best_s": task.best_s, "converged": False}


def _is_done(entry: dict[str, Any], trials: int) -> bool:
    return bool(entry.get("converged")) or entry.get("trials", 0) >= trials


def _pending_tasks(plan: dict[str, Any], state: dict[str, Any], trials: int) -> tuple[list[_Task], list[_Task]]:
    """(every task of the plan, those still short of ``trials`` and not converged), in the plan's order.

    A task is done when tune_state.json says so (tuned at this many trials, or converged), or when
    the database already holds enough of its records (e.g. from a killed run, whose chunk never
    finished: it is marked done in ``state`` now). Records and best times from earlier runs come
    from tune_state.json; the database's own count wins (it is the truth after a kill).
    """
    done = state.get("tasks", {})
    tasks = []
    for t in plan["tasks"]:
        entry = done.get(t["hash"], {})
        remaining = 0 if _is_done(entry, trials) else max(0, trials - t["records"])
        tasks.append(_Task(t["index"], t["name"], t["hash"], t["flops"], t["weight"], tuple(t["workloads"]),
                           remaining, records=t["records"], best_s=entry.get("best_s")))
    pending = [t for t in tasks if t.remaining > 0]
    state.setdefault("tasks", {})
    for t in tasks:
        if t.remaining == 0 and not _is_done(done.get(t.hash, {}), trials):
            state["tasks"][t.hash] = {**done.get(t.hash, {}), **_done_entry(t, trials)}
    return tasks, pending


def _round_targets(first: int, trials: int) -> list[int]:
    """Trials per task after each round: ``first``, then doubling, up to ``trials`` (e.g. 8, 16, 32, 64)."""
    targets, n = [], max(1, first)
    while n < trials:
        targets.append(n)
        n *= 2
    return targets + [trials]


def _rates(state: dict[str, Any], runner_kind: str) -> _Rates:
    """The rates measured by earlier runs with this runner (tune_state.json), else the assumed ones."""
    measured = state.get("measured", {}).get(runner_kind, {})
    spt = measured["tune_seconds"] / measured["trials"] if measured.get("trials") else ASSUMED_SECONDS_PER_TRIAL
    overhead = measured["overhead_seconds"] / measured["chunks"] if measured.get("chunks") else ASSUMED_CHUNK_OVERHEAD_S
    return _Rates(spt, overhead, "measured here" if measured.get("trials") else "assumed")


def _announce(job: _Job, n_models: int, plan: dict[str, Any], tasks: list[_Task], pending: list[_Task],
              rates: _Rates) -> tuple[int, float]:
    """Log what the run will tune and what it should cost, before it starts; (trials to run, estimate s)."""
    total_trials = sum(t.remaining for t in pending)
    n_chunks = -(-len(pending) // job.chunk_tasks)
    estimate = total_trials * rates.spt + n_chunks * rates.overhead
    log.info("tune %s: %d workloads -> %d tasks -> %d distinct; %d already tuned, %d to tune x up to %d trials = "
             "%d trials x %.2f s/trial (%s) + %d chunks x %.0f s = about %s%s", job.spec.name, n_models,
             plan["extracted_tasks"], len(tasks), len(tasks) - len(pending), len(pending), job.trials, total_trials,
             rates.spt, rates.basis, n_chunks, rates.overhead, _fmt_duration(estimate),
             f"; budget {_fmt_duration(job.budget_s)}" if job.budget_s is not None else "")
    return total_trials, estimate


def _run_chunks(job: _Job, state: dict[str, Any], tasks: list[_Task], pending: list[_Task], plan_path: Path,
                rates: _Rates, total_trials: int, run: _Run) -> list[_Task]:
    """Tune ``pending`` in rounds, a chunk at a time, while the budget allows, into ``run``; the tasks left.

    Trials go where the latency is and stop where they no longer help: round 1 brings every task
    to ``first_round`` trials (largest weighted FLOPs first), each later round doubles that for the
    tasks still improving, highest share of the space's latency (weight x best time) first, and a
    task whose round gained less than ``converged_gain`` is done. So a budget that ends mid-run
    has spent it on the tasks that matter. Before each chunk the budget decides how many of its
    tasks fit (none: the run stops). A chunk whose worker fails, or whose every candidate fails,
    leaves its tasks untuned for a rerun; a chunk that works is recorded (:func:`_record_chunk`).
    """
    current = {t.hash: t for t in pending}
    bar = tqdm(total=total_trials, desc=f"tune {job.spec.name}", unit="trial", file=sys.stderr,
               disable=None if job.progress is None else not job.progress)
    with bar:
        targets = _round_targets(job.settings.first_round, job.trials)
        for target_trials in targets:
            # A task a few trials short of this round's target (reopened by the polish, or one with few
            # distinct schedules) waits for the next round: a chunk costs ~30-50 s of start-up.
            least = 1 if target_trials == targets[-1] else max(1, job.settings.first_round // 2)
            queue = [dataclasses.replace(t, remaining=min(t.remaining, target_trials - t.records))
                     for t in current.values() if target_trials - t.records >= least]
            queue.sort(key=lambda t: -t.priority)
            while queue and not run.stopped:
                chunk = queue[:job.chunk_tasks]
                if job.budget_s is not None:
                    n = _fit(chunk, job.budget_s - (time.monotonic() - job.started), rates.spt, rates.overhead)
                    if n == 0:
                        run.stopped = True
                        break
                    chunk = chunk[:n]
                queue = queue[len(chunk):]
                reply, wall = _tune_chunk(job, chunk, plan_path, rates, bar)
                if reply is None:
                    run.failed += len(chunk)
                    for t in chunk:
                        current.pop(t.hash, None)
                    continue
                run.trials_added += reply["records_added"]
                run.trials_failed += reply["records_failed"]
                if reply["records_added"] and reply["records_failed"] == reply["records_added"]:
                    run.failed += len(chunk)
                    log.error("every candidate of a tuning chunk failed (%d of %d tasks; first build error: %s); "
                              "its tasks stay untuned; MetaSchedule's logs: %s", len(chunk), len(tasks),
                              reply["first_build_error"] or "none: they failed to run", str(job.log_dir))
                    for t in chunk:
                        current.pop(t.hash, None)
                    continue
                _record_chunk(job, state, tasks, chunk, reply, wall, run, rates, current, bar)
            if run.stopped:
                break
    if not run.timing["chunks"]:
        _save_state(job.state_path, state, tasks, job.db, whole_space=job.keys is None)
    return list(current.values())


def _polish(job: _Job, state: dict[str, Any], tasks: list[_Task], plan: dict[str, Any], plan_path: Path,
            rates: _Rates, run: _Run) -> bool:
    """Before the rounds, once per task: each task tuned here measures up to ``warm_start`` schedules it
    has not tried, from its structural siblings and other devices (compile/worker/seeds.py).

    The evolutionary search can settle in a poor region and stop there as converged; a sibling's
    schedule re-fitted to the task is often far better (BENCHMARKS "Sibling polish"). A task whose
    best improves by more than ``converged_gain`` is reopened: the rounds continue its search from
    the new best while it has trials left. Marked ``polished`` in tune_state.json, so a rerun (or a
    resume after a kill) does not repeat it. True when any chunk ran.
    """
    done = state.get("tasks", {})
    todo = [dataclasses.replace(t, remaining=job.settings.warm_start) for t in tasks
            if t.records and t.hash in done and not done[t.hash].get("polished")]
    if job.settings.warm_start < 1 or not todo:
        return False
    todo.sort(key=lambda t: -t.priority)
    estimate = sum(t.remaining for t in todo) * rates.spt + -(-len(todo) // job.chunk_tasks) * rates.overhead
    log.info("polish: %d tuned tasks measure up to %d sibling / other-device schedules each, about %s",
             len(todo), job.settings.warm_start, _fmt_duration(estimate))
    plan_tasks = {t["hash"]: t for t in plan["tasks"]}
    reopened = 0
    bar = tqdm(total=sum(t.remaining for t in todo), desc=f"polish {job.spec.name}", unit="trial",
               file=sys.stderr, disable=None if job.progress is None else not job.progress)
    with bar:
        while todo:
            chunk = todo[:job.chunk_tasks]
            if job.budget_s is not None:
                chunk = chunk[:_fit(chunk, job.budget_s - (time.monotonic() - job.started), rates.spt,
                                    rates.overhead)]
                if not chunk:
                    run.stopped = True
                    break
            todo = todo[len(chunk):]
            reply, _ = _tune_chunk(job, chunk, plan_path, rates, bar, polish=True)
            if reply is None:
                continue
            run.trials_added += reply["records_added"]
            run.trials_failed += reply["records_failed"]
            for t in chunk:
                entry = done[t.hash]
                before, best = entry.get("best_s") or t.best_s, reply["best_seconds"].get(t.hash)
                records = int(reply["records"].get(t.hash, t.records))
                plan_tasks[t.hash]["records"] = records
                entry.update(records=records, best_s=best or before, polished=True)
                if before and best and (before - best) / before > job.settings.converged_gain:
                    log.info("polish: %s %.3f -> %.3f ms", t.name, before * 1e3, best * 1e3)
                    entry.update(converged=False, trials=0)  # a new best: the rounds may search on from it
                    reopened += 1
            _save_state(job.state_path, state, tasks, job.db, whole_space=job.keys is None)
    log.info("polish: %d tasks improved by more than %.0f %%", reopened, 100 * job.settings.converged_gain)
    return True


def _tune_chunk(job: _Job, chunk: list[_Task], plan_path: Path, rates: _Rates,
                bar: tqdm, *, polish: bool = False) -> tuple[dict[str, Any] | None, float]:
    """One ``tune_chunk`` worker over ``chunk``, the bar following its records; (reply, or None if it failed; wall s).

    With ``polish`` the worker measures only seed schedules the tasks have not tried (no search).

    A failed worker is logged and may have died mid-append: the database's last line is repaired.
    """
    spec = job.spec
    shown = 0
    allotted = sum(t.remaining for t in chunk)

    def on_records(n_new: int) -> None:
        nonlocal shown
        step = min(n_new, allotted - shown)
        if step > 0:
            shown += step
            bar.update(step)

    chunk_db = slice_for_chunk(job.db, [t.hash for t in chunk])  # what TVM opens in seconds, not half a minute
    request = {
        "op": "tune_chunk", "die_with_parent": True, "parent_pid": os.getpid(),
        "plan_path": str(plan_path), "indices": [t.index for t in chunk], "remaining": [t.remaining for t in chunk],
        "tvm_target": spec.tvm_target_with_host(), "target_name": spec.name, "database_dir": str(chunk_db),
        "log_dir": str(job.log_dir), "linker": job.linker,
        "max_trials_per_task": max(t.remaining for t in chunk), "max_trials_global": allotted,
        "settings": dataclasses.asdict(job.settings), "transfer_databases": job.transfer,
        "rpc": {"host": job.rpc.host, "port": job.rpc.port, "key": job.rpc.key} if job.rpc else None,
        "polish": polish,
    }
    chunk_start = time.monotonic()
    try:
        reply = _run_watched(request, f"tuning {len(chunk)} {spec.name} tasks",
                             3 * (rates.overhead + allotted * rates.spt) + 600, job.env,
                             _RecordCounter(chunk_db / RECORD_FILE), on_records)
    except OfaDeployError as exc:
        log.error("a tuning chunk failed (its %d tasks stay untuned; rerun to retry): %s", len(chunk), exc)
        bar.update(allotted - shown)
        return None, time.monotonic() - chunk_start
    finally:
        # What it measured, also when it failed or Ctrl-C / SIGTERM stopped it (the worker is dead by
        # now; a torn last line is dropped). Only a kill -9 of this process leaves the slice to the next run.
        merge_chunk(job.db)
    wall = time.monotonic() - chunk_start
    bar.update(allotted - shown)
    return reply, wall


def _record_chunk(job: _Job, state: dict[str, Any], tasks: list[_Task], chunk: list[_Task], reply: dict[str, Any],
                  wall: float, run: _Run, rates: _Rates, current: dict[str, _Task], bar: tqdm) -> None:
    """A chunk that worked: each task's records and best time move on; a task that reached ``trials``
    or gained less than ``converged_gain`` this round is done (its unspent trials leave the bar);
    its cost replaces the rates; tune_state.json is saved."""
    timing = run.timing
    timing["trials"] += reply["records_added"]
    timing["tune_seconds"] += reply["tune_seconds"]
    timing["overhead_seconds"] += max(0.0, wall - reply["tune_seconds"])
    timing["chunks"] += 1
    for t in chunk:
        before = current[t.hash]
        best = reply["best_seconds"].get(t.hash)
        records = int(reply["records"].get(t.hash, before.records + t.remaining))
        after = dataclasses.replace(before, records=records, best_s=best, remaining=max(0, job.trials - records))
        gained = (before.best_s - best) / before.best_s if before.best_s and best else None
        converged = (gained is not None and gained < job.settings.converged_gain
                     and after.records >= 2 * job.settings.first_round)
        if after.remaining <= 0 or converged:
            state["tasks"][t.hash] = {**state["tasks"].get(t.hash, {}), **_done_entry(after, job.trials,
                                                                                     converged=converged)}
            current.pop(t.hash)
            if after.remaining > 0:
                bar.total = max(bar.n, bar.total - after.remaining)
                bar.refresh()
        else:
            state["tasks"][t.hash] = {**state["tasks"].get(t.hash, {}), **_progress_entry(after)}
            current[t.hash] = after
    run.tuned_tasks.update(t.hash for t in chunk)
    run.tuned = len(run.tuned_tasks)
    if timing["trials"]:  # this run's measurements replace the assumption / older ones
        rates.spt = timing["tune_seconds"] / timing["trials"]
        rates.overhead = timing["overhead_seconds"] / timing["chunks"]
        state.setdefault("measured", {})[job.runner_kind] = {
            **timing, "host": platform.node(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _save_state(job.state_path, state, tasks, job.db, whole_space=job.keys is None)
    log.info("chunk: %d tasks, %d trials (%d seeds) in %.0f s (%.2f s/trial, %.0f s start-up)", len(chunk),
             reply["records_added"], reply.get("seed_records", 0), wall,
             reply["tune_seconds"] / max(1, reply["records_added"]), wall - reply["tune_seconds"])


def _save_state(path: Path, state: dict[str, Any], tasks: list[_Task], db: Path, *, whole_space: bool) -> None:
    """tune_state.json: settings, done tasks, measured rates, and the resolutions fully tuned.

    ``tuned_resolutions`` lists the resolutions all of whose tasks are tuned: the ones a latency
    model built from this database covers with tuned code. Only a run over whole resolutions
    (no ``keys`` subset) can tell.
    """
    done = state.get("tasks", {})
    by_res: dict[int, list[bool]] = {}
    for t in tasks:
        for r in {int(k.split("/")[0][1:]) for k in t.workloads}:
            by_res.setdefault(r, []).append(t.hash in done)
    tuned = set(state.get("tuned_resolutions", []))
    if whole_space:
        tuned |= {r for r, flags in by_res.items() if all(flags)}
    state["tuned_resolutions"] = sorted(tuned)
    state["database_sha256"] = database_hash(db) if (db / RECORD_FILE).is_file() else None
    state["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(path, state)
