"""Parent-side API for timing many models: ``time_workloads``. Never imports TVM.

The per-block latency table of ``ofa-deploy profile`` needs ~92 small models built and timed per
resolution, and its calibration (and the accuracy bench) whole subnets. All go to the worker op
``profile`` (worker/profile.py) in chunks: one process per chunk pays TVM's start-up once for many
models, while a crash (or a kill) loses at most the model in flight, because the worker appends
each finished item to a results file that this side follows (which also drives the progress bar).

**Build once, time in passes.** Each model is built once into a content-hashed module cache
(:func:`module_cache_dir`: target, linker, database and TVM version name the folder, the ONNX
file's sha256 names the ``.so``), then the whole list is timed ``passes`` times, one pass after
the other, and the fastest of the passes timed in the machine's steady state is kept
(:func:`fastest_pass`). Why: on a shared VM the host takes part of the CPU for tens of seconds
at a time (models then run 1.3-1.6x slow). A speed probe read before every sample
(``compile.speed``) recognises those spells: their samples are dropped, and a model timed only in
them is timed again. The steady state itself still drifts by ~10 % over tens of minutes, which
the probe also reads (BENCHMARKS.md, "Timing in the machine's steady state").

**Or in turns** (``ProfileSettings.turns``): a pass loads every model of the list into one process
and calls them in turns (A B C, B C A, ...), each turn's speed divided out
(``compile.speed.in_turns``). Models timed one after another each catch the VM's speed of their
own minute; models timed in the same turns share it, so their ratios hold to 1-4 % where separate
timings scatter 8-13 % (BENCHMARKS.md, "Timing in turns"). A killed run keeps
its builds; a module whose last pass is done leaves the cache (unless ``keep_modules``: a whole
profile is ~2.5 GB of modules).

**On a board** (``remote``: ``ofa-deploy profile --rpc``) the same modules are cross-compiled
here and timed on the device over TVM RPC, one session per chunk (worker/profile.py); the
timings are ``measured`` on a real board, ``emulated`` through a server under qemu.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from ofa_deploy.atomic import sweep_stale
from ofa_deploy.cache import cache_root
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.targets import TargetSpec, get_target
from ofa_deploy.tuning_logs.database import (best_records, check_database_target, database_hash, file_sha256,
                                             transfer_databases)

from .build import local_measurement
from .isolate import run_worker_polling
from .rpc import EMULATED_REPEAT, RpcSpec, check_reachable, rpc_measurement
from .speed import CONTENDED_RATIO, SteadyState, in_turns, steady_passes_mask
from .toolchain import find_nvcc, installed_tvm_version, linker_for
from .types import LatencyMeasurement

log = logging.getLogger(__name__)


ONE_BY_ONE = "one by one"  # ProfileSettings.timing of turns=0 (and of every timing from before turns existed)


@dataclass(frozen=True)
class ProfileSettings:
    """How each workload is timed; defaults give ~1 % medians for 20 us..2 ms models on an idle CPU."""

    repeat: int = 15  # samples per workload and pass; their median is the pass's timing
    min_repeat_ms: float = 40.0  # each sample runs the model back to back for at least this long
    passes: int = 3  # timing passes over the whole list (minutes apart); the fastest steady pass is kept
    chunk_size: int = 16  # workloads per worker process (start-up ~5 s is paid once per chunk)
    keep_modules: bool = False  # keep each module in the cache after its last pass (they weigh ~1-20 MB each)
    num_threads: int | None = None  # TVM_NUM_THREADS; None = isolate.tvm_threads() (all cores), as time_local
    timeout_per_item_s: float = 600.0  # a chunk's worker gets chunk_size x this
    # Local CPU timings read a speed probe (compile.speed) and keep the samples timed in the steady state:
    steady_wait_s: float = 5.0  # before each model, wait up to this long for the machine to be steady
    retry_passes: int = 3  # then up to this many more passes for models whose every pass was contended
    retry_wait_s: float = 60.0  # the wait before each model of those passes (slow spells last ~10-70 s)
    # 0: each pass times the models one after another (repeat samples each, probe-filtered, above).
    # N: each pass loads every model of the list into one process and calls them in N turns, each turn's
    # speed divided out (compile.speed.in_turns): the machine's drift then hits every model alike.
    turns: int = 0

    @property
    def timing(self) -> str:
        """How a pass times its models, as models and result rows record it (timings of two ways never mix)."""
        return f"in {self.turns} turns" if self.turns else ONE_BY_ONE

    def __post_init__(self) -> None:
        if self.repeat < 1 or self.min_repeat_ms < 0 or self.chunk_size < 1 or self.passes < 1:
            raise OfaDeployError(f"profile settings: repeat >= 1, min_repeat_ms >= 0, passes >= 1 and chunk_size >= 1 "
                                 f"(got {self.repeat}, {self.min_repeat_ms}, {self.passes}, {self.chunk_size})")
        if self.turns < 0:
            raise OfaDeployError(f"profile settings: turns >= 0 (0: one model after another; got {self.turns})")
        if self.steady_wait_s < 0 or self.retry_passes < 0 or self.retry_wait_s < 0:
            raise OfaDeployError(f"profile settings: steady_wait_s, retry_passes and retry_wait_s >= 0 (got "
                                 f"{self.steady_wait_s}, {self.retry_passes}, {self.retry_wait_s})")


@dataclass(frozen=True)
class WorkloadItem:
    """One model to time: its key, ONNX file and static input shape."""

    key: str
    onnx_path: Path
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class RemoteDevice:
    """A board that ``time_workloads`` times on over TVM RPC, instead of this machine."""

    rpc: RpcSpec  # a tracker and the board's key (HOST:PORT:KEY) or a server (HOST:PORT)
    emulated: bool = False  # the server runs under qemu: timings are "emulated", plumbing, never a speed

    @property
    def source(self) -> str:
        """The label every timing on this device carries."""
        return "emulated" if self.emulated else "measured"


OnResult = Callable[[str, int, LatencyMeasurement, dict[str, Any]], None]


def local_device(spec: TargetSpec) -> str:
    """``"cpu"`` or ``"cuda"`` if modules for ``spec`` run on this machine; else OfaDeployError."""
    if spec.analytic_only:
        raise OfaDeployError(f"target {spec.name} is analytic-only ({spec.description}); nothing can be timed")
    if runs_here(spec):
        return "cpu"
    if spec.kind == "cuda":
        import torch  # only to ask whether a GPU is present

        if torch.cuda.is_available():
            return "cuda"
        raise OfaDeployError(f"target {spec.name}: no CUDA GPU on this machine to time it on")
    raise OfaDeployError(f"target {spec.name} ({spec.arch}) does not run on this machine ({platform.machine()}); "
                         "time it on the board over --rpc HOST:PORT:KEY (an RPC tracker with the board registered)")


def runs_here(spec: TargetSpec) -> bool:
    """True when ``spec``'s modules run on this machine's CPU (so a board over RPC is not its device)."""
    return spec.kind == "cpu" and spec.arch == platform.machine() and not spec.is_cross


def remote_device(spec: TargetSpec) -> str:
    """``"cpu"`` or ``"cuda"``: the device of a board that runs ``spec``'s modules; analytic-only -> OfaDeployError."""
    if spec.analytic_only:
        raise OfaDeployError(f"target {spec.name} is analytic-only ({spec.description}); nothing can be timed")
    return "cuda" if spec.kind == "cuda" else "cpu"


def fastest_pass(passes: Sequence[LatencyMeasurement]) -> LatencyMeasurement:
    """One model's timing from its passes: the fastest pass of those timed in the steady state (see the
    module docstring for why).

    Passes timed while the speed probe read contended (against the calmest of them) do not count:
    a model whose other passes were steady says nothing about its speed in them. ``std_ms`` is the
    spread of all pass medians (how much the machine's speed moved), ``n`` counts every sample of
    every pass.
    """
    if not passes:
        raise ValueError("no timing passes")
    steady = [m for m, ok in zip(passes, steady_passes_mask([m.probe_us for m in passes])) if ok]
    best = min(steady, key=lambda m: m.median_ms)
    medians = [m.median_ms for m in passes]
    return dataclasses.replace(best, std_ms=statistics.pstdev(medians) if len(medians) > 1 else 0.0,
                               n=sum(m.n for m in passes))


def module_cache_dir(spec: TargetSpec, database_sha256: str | None,
                     transfer_sha256: Sequence[str] = ()) -> Path:
    """Content-hashed folder of built modules: everything a build depends on except the ONNX file.

    Files inside are ``<sha256 of the ONNX file>.so`` plus a ``.json`` with what the build
    reported; the same model, target, linker, database (``database_sha256``, None: untuned), the
    other devices' databases it borrowed from (``transfer_sha256``) and TVM always map to the
    same file.
    """
    key = json.dumps({"tvm_target": spec.tvm_target_with_host(), "linker": linker_for(spec.cross_compiler),
                      "data_layout": spec.data_layout,
                      "database_sha256": database_sha256, "tvm_version": installed_tvm_version(),
                      **({"transfer": list(transfer_sha256)} if transfer_sha256 else {})}, sort_keys=True)
    return cache_root() / "modules" / f"{spec.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _schedules(record: dict[str, Any]) -> str:
    """Where a build's schedules came from, e.g. ``0/3 functions tuned, 3 transferred`` (borrowed from another
    device's database: tuned code all the same)."""
    other = "".join(f", {n} {kind}" for kind, n in (record.get("schedule_sources") or {}).items()
                    if kind in ("transferred", "sibling") and n)
    return f"{record['tuned_funcs']}/{record['total_funcs']} functions tuned{other}"


def check_turns(settings: ProfileSettings, spec: TargetSpec, remote: RemoteDevice | None) -> None:
    """Refuse ``settings.turns`` where the models are not timed on this machine's CPU: a pass in turns holds every
    model in one process here (a board over RPC or a GPU is timed one model after another)."""
    if settings.turns and (remote is not None or local_device(spec) != "cpu"):
        where = "over RPC" if remote is not None else f"on {local_device(spec)}"
        raise OfaDeployError(f"--turns {settings.turns}: timing in turns holds every model in one process of this "
                             f"machine's CPU; {spec.name} is timed {where}: time it one model after another "
                             "(--turns 0)")


def time_workloads(items: Sequence[WorkloadItem | tuple[str, str | Path, Sequence[int]]], target: TargetSpec | str,
                   database_dir: str | Path | None = None, *, input_name: str = "input",
                   settings: ProfileSettings = ProfileSettings(), on_result: OnResult | None = None,
                   progress: bool | None = True, passes_done: dict[str, int] | None = None,
                   transfer: Sequence[tuple[str, str | Path]] | None = None,
                   remote: RemoteDevice | None = None) -> dict[str, list[LatencyMeasurement]]:
    """Build each ONNX model for ``target`` (with ``database_dir`` if given) once, then time it in passes,
    here or on the ``remote`` board.

    Builds are ``ofa-deploy compile``'s: functions the database lacks borrow from ``transfer``
    (other devices' databases; None: the target's default, ``transfer_databases``).

    Returns ``{key: [LatencyMeasurement per pass timed in this call]}`` (``source="measured"``, or
    the remote's label; combine with :func:`fastest_pass`). ``passes_done`` says how many passes each key already
    has from an earlier (killed) run: only the missing ones are timed. ``on_result(key,
    pass_index, measurement, record)`` is called as each timing finishes (``record`` has
    ``tuned_funcs``, ``total_funcs``, ``tvm_version``, ``tvm_target``), so a caller can persist
    partial results; a later failure raises OfaDeployError after those calls.

    On this machine's CPU every sample is taken with a speed-probe reading (``compile.speed``):
    each model waits up to ``settings.steady_wait_s`` for the steady state, keeps its steady
    samples, and models whose every pass was contended get up to ``settings.retry_passes`` more
    passes (pass indices from ``settings.passes`` on).
    """
    spec = get_target(target)
    device = local_device(spec) if remote is None else remote_device(spec)
    check_turns(settings, spec, remote)
    work = [it if isinstance(it, WorkloadItem) else WorkloadItem(str(it[0]), Path(it[1]), tuple(int(d) for d in it[2]))
            for it in items]
    for it in work:
        if not Path(it.onnx_path).is_file():
            raise OfaDeployError(f"ONNX file not found: {it.onnx_path} (workload {it.key})")
    db_hash = database_hash(database_dir) if database_dir is not None else None  # also validates the directory
    if database_dir is not None:
        check_database_target(database_dir, spec.tvm_target, spec.name)
    env: dict[str, str] = {}
    if spec.kind == "cuda":
        env = {"PATH": str(Path(find_nvcc()).parent) + os.pathsep + os.environ.get("PATH", ""),
               "TVM_CUDA_COMPILE_MODE": "nvcc"}
    if settings.num_threads:  # else run_worker's tvm_threads()
        env["TVM_NUM_THREADS"] = str(settings.num_threads)
    if transfer is None:
        transfer = transfer_databases(spec.name)
    cache = module_cache_dir(spec, db_hash, [database_hash(d) for _, d in transfer])
    cache.mkdir(parents=True, exist_ok=True)
    sweep_stale(cache)  # half-built modules of a killed run
    so_paths = {it.key: cache / f"{file_sha256(it.onnx_path)}.so" for it in work}
    base = {"op": "profile", "target_name": spec.name, "tvm_target": spec.tvm_target_with_host(),
            "linker": linker_for(spec.cross_compiler), "input_name": input_name, "device": device,
            "data_layout": spec.data_layout,  # what compile builds: the database's workloads are in it
            "database_dir": str(best_records(database_dir).resolve()) if database_dir is not None else None,
            "transfer_databases": [[label, str(Path(d).resolve())] for label, d in transfer],
            "repeat": settings.repeat, "min_repeat_ms": settings.min_repeat_ms}
    if remote is not None:
        check_reachable(remote.rpc)  # one clear line within seconds, not a worker's traceback per chunk
        base["rpc"] = {"host": remote.rpc.host, "port": remote.rpc.port, "key": remote.rpc.key}
        if remote.emulated:  # an emulator's speed means nothing: the fewest runs that exercise the plumbing
            base.update(repeat=EMULATED_REPEAT, min_repeat_ms=0.0)

    steady = SteadyState.for_host(settings.num_threads) if remote is None and device == "cpu" else None

    def measurement(record: dict[str, Any]) -> LatencyMeasurement:
        if remote is not None:
            return rpc_measurement(record, remote.rpc, device, remote.emulated)
        if steady is not None:
            steady.saw(record)
        return local_measurement(record, device, steady.floor_us if steady is not None else None)
    done = dict(passes_done or {})
    out: dict[str, list[LatencyMeasurement]] = {it.key: [] for it in work}
    disable = None if progress is None else not progress

    def built(it: WorkloadItem) -> bool:
        return so_paths[it.key].is_file() and Path(f"{so_paths[it.key]}.json").is_file()

    def run_round(name: str, todo: list[WorkloadItem], pass_index: int | None, wait_s: float) -> None:
        with tqdm(total=len(todo), desc=f"profile {spec.name}: {name}", unit="model", file=sys.stderr,
                  disable=disable) as bar:
            for start in range(0, len(todo), settings.chunk_size):
                chunk = todo[start:start + settings.chunk_size]
                request = {**base, "time": pass_index is not None,
                           **(steady.request(wait_s) if steady is not None and pass_index is not None else {})}
                _run_chunk(chunk, so_paths, request, env, settings, measurement, bar,
                           lambda key, m, record, p=pass_index: _keep(key, p, m, record, out, on_result))

    todo = [it for it in work if not built(it)]
    if todo:
        run_round("build", todo, None, 0.0)
    for p in range(settings.passes):
        todo = [it for it in work if done.get(it.key, 0) <= p]
        if todo and settings.turns:
            _time_pass_in_turns(todo, so_paths, settings, env, p, spec.name, disable,
                                lambda key, m, record, p=p: _keep(key, p, m, record, out, on_result))
        elif todo:
            run_round(f"time pass {p + 1}/{settings.passes}", todo, p, settings.steady_wait_s)

    def slowed() -> list[WorkloadItem]:  # timed in this call, and only while the machine was slowed
        return [it for it in work if out[it.key] and steady.all_contended([m.probe_us for m in out[it.key]])]

    for r in range(settings.retry_passes if steady is not None and not settings.turns else 0):
        todo = slowed()
        if not todo:
            break
        log.info("%d models were timed contended in every pass (speed probe above %.2f x its floor %.3f us): "
                 "timing them again (retry %d/%d)", len(todo), CONTENDED_RATIO, steady.floor_us, r + 1,
                 settings.retry_passes)
        run_round(f"retry {r + 1}/{settings.retry_passes}", todo, settings.passes + r, settings.retry_wait_s)
    left = slowed() if steady is not None and not settings.turns else []
    if left:
        log.warning("%d models were timed only while the machine was slowed (%s ...): their latencies are "
                    "high; time them again on a quieter machine", len(left), left[0].key)
    if not settings.keep_modules:  # every pass is with the caller now; a killed run never gets here
        for it in work:
            if out[it.key] and done.get(it.key, 0) + len(out[it.key]) >= settings.passes:
                for path in (so_paths[it.key], Path(f"{so_paths[it.key]}.json")):
                    path.unlink(missing_ok=True)
    return out


TURN_BLOCK = 3  # timed samples per model and turn (their median is the turn's timing)
TURN_SETTLE = 0  # untimed calls per model before them: none, time_evaluator makes one before every sample
TURN_SAMPLE_MS = 2.0  # a sample runs a model back to back for at least this long (a 20 us block: 100 calls)


def _time_pass_in_turns(todo: list[WorkloadItem], so_paths: dict[str, Path], settings: ProfileSettings,
                        env: dict[str, str], pass_index: int, target_name: str, disable: bool | None,
                        keep: Callable[[str, LatencyMeasurement, dict[str, Any]], None]) -> None:
    """One timing pass of ``todo`` (all built) in one process, in ``settings.turns`` turns (worker op
    ``time_interleaved``); each model's latency at the pass's median speed (``compile.speed.in_turns``).

    Why: on a shared VM, models timed minutes apart differ by the machine's drift (10-30 %), which no
    probe reading undoes well; models timed in the same turns share it, and the turn's speed divides
    out (BENCHMARKS.md, "Timing in turns": two models' ratio scatters 1-4 % where their separate
    timings scatter 8-13 %). The measurements carry no speed-probe reading: a pass is already at its
    own median speed, and the probe does not follow what is left, the level of the minutes the pass
    ran in (a k fitted on such passes came out 0.0 in one profile and 1.9 in the next); a model's
    entry is then its fastest pass, as on a board.
    """
    from ofa_deploy.export import seeded_input  # torch: already loaded by whoever exported the models

    with tempfile.TemporaryDirectory(prefix="ofa_deploy_turns_") as tmp:
        inputs: list[str] = []
        for k, it in enumerate(todo):
            inputs.append(str(Path(tmp) / f"input{k}.npy"))
            np.save(inputs[-1], seeded_input(it.input_shape))
        progress = Path(tmp) / "turns_done"
        progress.touch()
        request = {"op": "time_interleaved", "so_paths": [str(so_paths[it.key]) for it in todo],
                   "input_paths": inputs, "calls": settings.turns, "warmup": 1, "block": TURN_BLOCK,
                   "settle": TURN_SETTLE, "min_sample_ms": TURN_SAMPLE_MS, "progress_path": str(progress)}
        log.info("time pass %d/%d: %d models in one process, %d turns", pass_index + 1, settings.passes, len(todo),
                 settings.turns)
        with tqdm(total=settings.turns, desc=f"profile {target_name}: time pass {pass_index + 1}/{settings.passes} "
                  f"({len(todo)} models in turns)", unit="turn", file=sys.stderr, disable=disable) as bar:
            reply = run_worker_polling(
                request, what=f"timing {len(todo)} models in {settings.turns} turns ({todo[0].key} ...)",
                timeout=settings.timeout_per_item_s * len(todo), env=env,
                poll=lambda: bar.update(progress.stat().st_size - bar.n))
    timing = in_turns(reply["samples_ms"], TURN_BLOCK)
    where = f"{platform.machine()} ({reply['threads']} threads)"
    log.info("%s pass %d: the turns ran at %.2f-%.2fx the median speed (5th-95th percentile)", target_name,
             pass_index + 1, *np.percentile(timing.turn_speed, [5, 95]))
    for it, ms, sd, number in zip(todo, timing.latency_ms, timing.spread, reply["numbers"]):
        with open(f"{so_paths[it.key]}.json") as f:
            record = {"key": it.key, **json.load(f), "timing": settings.timing}
        keep(it.key, LatencyMeasurement(median_ms=ms, std_ms=ms * sd, n=settings.turns, source="measured",
                                        runs_per_sample=number, device=where), record)


def _keep(key: str, pass_index: int | None, m: LatencyMeasurement | None, record: dict[str, Any],
          out: dict[str, list[LatencyMeasurement]], on_result: OnResult | None) -> None:
    if pass_index is None or m is None:  # a build-only round
        return
    out[key].append(m)
    if on_result is not None:
        on_result(key, pass_index, m, record)


def _run_chunk(chunk: list[WorkloadItem], so_paths: dict[str, Path], base: dict[str, Any], env: dict[str, str],
               settings: ProfileSettings, measurement: Callable[[dict[str, Any]], LatencyMeasurement], bar: tqdm,
               keep: Callable[[str, LatencyMeasurement | None, dict[str, Any]], None]) -> None:
    """One worker process for ``chunk``; follow its results file until it exits.

    ``measurement`` turns a timed record into a labelled LatencyMeasurement (this machine's or a board's).
    """
    timeout = settings.timeout_per_item_s * len(chunk)
    with tempfile.TemporaryDirectory(prefix="ofa_deploy_profile_") as tmp:
        results = Path(tmp) / "results.jsonl"
        results.touch()
        if base.get("rpc"):  # the board ends the session after this: sized for the whole chunk
            base = {**base, "rpc": {**base["rpc"], "session_timeout": int(timeout)}}
        request = {**base, "results_path": str(results),
                   "items": [{"key": it.key, "onnx_path": str(Path(it.onnx_path).resolve()),
                              "so_path": str(so_paths[it.key]), "input_shape": list(it.input_shape)}
                             for it in chunk]}
        seen, pending = 0, b""
        with open(results, "rb") as f:

            def drain() -> None:  # the worker appends one JSON line per finished item
                nonlocal seen, pending
                pending += f.read()
                *lines, pending = pending.split(b"\n")  # a half-written last line waits for the next round
                for line in lines:
                    record = json.loads(line)
                    seen += 1
                    bar.update(1)
                    m = measurement(record) if "samples_ms" in record else None
                    if m is not None:
                        bar.set_postfix_str(f"{record['key']} {m.median_ms:.3f} ms")
                        log.info("timed %s: %.4f ms %s on %s (median of %d x %d runs; %s)", record["key"],
                                 m.median_ms, m.source, m.device, m.n, m.runs_per_sample, _schedules(record))
                    else:
                        log.info("built %s (%s)", record["key"], _schedules(record))
                    keep(record["key"], m, record)

            what = "timing" if base["time"] else "building"
            run_worker_polling(request, what=f"{what} {len(chunk)} models ({chunk[0].key} ...)",
                               timeout=timeout, env=env, poll=drain)
        if seen != len(chunk):
            raise OfaDeployError(f"profiling worker returned {seen} of {len(chunk)} items")
