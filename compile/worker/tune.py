"""MetaSchedule tuning of the search space's fused tasks (worker-only: imports TVM).

Two worker ops, driven chunk by chunk by the parent (compile/tune.py):

``tune_plan``
    Each workload ONNX (stem, block variants, head per resolution; see ofa_deploy/workloads.py)
    goes through the same ``prepare()`` as ``compile`` (so tuned records match what a build
    looks up), MetaSchedule extracts its fused tasks, and identical tasks across workloads are
    merged (structural hash + structural equality): the 92 workloads of one resolution hold 440
    tasks but only ~187 distinct ones, and each is tuned once for every subnet. The distinct
    task modules are saved (``tvm.ir.save_json``) to a plan file, so the chunks reload them in
    milliseconds instead of re-importing ONNX. The op also checks the database's workload table
    against its stored structural hashes (TVM itself does not: a tampered file loads silently)
    and counts the records each task already has (resume).

``tune_chunk``
    ``ms.tune_tasks`` with the XGBoost cost model over a subset of the plan, into the JSON
    database the parent gives it: the chunk's slice of the device's database, which the parent
    merges back. Measured records are appended as they arrive, so a killed chunk keeps them.

Costs on a 2-core machine that shape the defaults here:

* ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, which builds every CUDA/ROCm/Hexagon
  intrinsic (30-80 s). CPU tasks only use the x86/ARM ones, so for CPU targets the GPU/DSP
  modules are replaced by empty stand-ins before the import (:func:`_cpu_intrinsics_only`).
* MetaSchedule's ``LocalBuilder`` starts a new process pool for every batch of candidates, and
  its default build function imports the same intrinsics in each new process. The builder here
  keeps one pool for the whole chunk and builds without that import (:class:`_PoolBuilder`).
* The evolutionary search's default population (512 x 4 generations of XGBoost scoring) costs
  tens of seconds per round: far more than measuring the 8 candidates it picks. Smaller
  defaults (compile/tune.py: TuneSettings) make a trial cost about as much as building and timing it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.support.popen_pool import PopenPoolExecutor

from ofa_deploy.atomic import owner_tag, write_text
from ofa_deploy.tuning_logs.layout import FAILED_RUN_SECS

log = logging.getLogger(__name__)

PLAN_FORMAT = 1
_NON_CPU_INTRINSICS = ("cuda", "rocm", "hexagon", "metal")


def _cpu_intrinsics_only() -> None:
    """Let ``import tvm.s_tir.tensor_intrin`` register only the CPU intrinsics (x86, ARM, RISC-V).

    Must run before anything imports ``tvm.s_tir.tensor_intrin``; only for a process that tunes
    CPU tasks (the stand-ins would break a CUDA schedule that tensorizes).
    """
    package = "tvm.s_tir.tensor_intrin"
    if package in sys.modules:
        return
    for name in _NON_CPU_INTRINSICS:
        sys.modules.setdefault(f"{package}.{name}", types.ModuleType(f"{package}.{name}"))


def _popen_init() -> None:
    """Initializer of the builder/runner processes: they die with this chunk's worker."""
    from .lifetime import die_with_parent

    die_with_parent(None)


def _build_artifact(mod: tvm.IRModule, target: tvm.target.Target, linker: str, out_dir: str) -> str:
    """Build one scheduled candidate into a ``.so`` (runs in the builder process).

    Same as MetaSchedule's default build minus its tensor-intrinsic import (the candidate is
    already scheduled and tensorized; lowering does not look intrinsics up), and exported as a
    shared library with the target's linker, which both LocalRunner and an RPC device load.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    rt_mod = tvm_build(mod, target=target)
    path = tempfile.mkdtemp(dir=out_dir)
    artifact = os.path.join(path, "candidate.so")
    rt_mod.export_library(artifact, cc=linker)
    return artifact


@derived_object
class _PoolBuilder(PyBuilder):
    """A builder with one persistent process for the whole chunk (see the module docstring).

    A candidate that fails to build, or takes longer than ``timeout_sec`` (the process is then
    killed and restarted), becomes a failed BuilderResult: MetaSchedule records it as a failed
    trial and goes on.
    """

    def __init__(self, *, timeout_sec: float, linker: str, out_dir: str) -> None:
        super().__init__()
        self.timeout_sec = timeout_sec
        self.linker = linker
        self.out_dir = out_dir
        self.pool = PopenPoolExecutor(max_workers=1, timeout=timeout_sec, initializer=_popen_init)
        self.first_error: str | None = None  # reported when every candidate of a chunk fails

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        results = []
        for item in build_inputs:
            future = self.pool.submit(_build_artifact, item.mod, item.target, self.linker, self.out_dir)
            error = None
            try:
                results.append(BuilderResult(future.result(), None))
            except TimeoutError:
                error = f"build timed out after {self.timeout_sec:g} s"
            except Exception as exc:  # noqa: BLE001 - a failing candidate is a failed trial, not a failed run
                error = f"build failed: {exc}"
            if error is not None:
                results.append(BuilderResult(None, error))
                self.first_error = self.first_error or error.strip().splitlines()[-1][:300]
        return results

    def shutdown(self) -> None:
        self.pool.shutdown()


def _load_models(request: dict[str, Any], target: tvm.target.Target) -> list[tuple[str, tvm.IRModule]]:
    from .build import load_onnx, prepare

    return [(m["key"], prepare(load_onnx(m["onnx_path"], request["input_name"], m["input_shape"]), target,
                               request["data_layout"]))
            for m in request["models"]]


def _extract_plan(request: dict[str, Any], target: tvm.target.Target) -> dict[str, Any]:
    """Distinct tasks over all workloads, ordered by weighted FLOPs (largest first), then name."""
    groups: dict[int, list[dict[str, Any]]] = {}  # structural hash -> tasks with that hash
    extracted = 0
    for key, mod in _load_models(request, target):
        for task in ms.relax_integration.extract_tasks(mod, target):
            extracted += 1
            task_mod = task.dispatched[0]
            shash = tvm_ffi.structural_hash(task_mod)
            same = next((t for t in groups.get(shash, []) if tvm_ffi.structural_equal(t["mod"], task_mod)), None)
            if same is None:
                same = {"mod": task_mod, "name": task.task_name, "weight": 0, "workloads": [],
                        "flops": float(tvm.s_tir.analysis.estimate_tir_flops(task_mod)),
                        "hash": str(shash) if shash not in groups else f"{shash}-{len(groups[shash])}"}
                groups.setdefault(shash, []).append(same)
            same["weight"] += int(task.weight)
            if key not in same["workloads"]:
                same["workloads"].append(key)
    tasks = [t for group in groups.values() for t in group]
    tasks.sort(key=lambda t: (-t["weight"] * t["flops"], t["name"], t["hash"]))
    return {"format": PLAN_FORMAT, "plan_key": request["plan_key"], "extracted_tasks": extracted,
            "tasks": [{"index": i, "name": t["name"], "hash": t["hash"], "weight": t["weight"],
                       "flops": t["flops"], "workloads": t["workloads"], "mod": tvm.ir.save_json(t["mod"])}
                      for i, t in enumerate(tasks)]}


def workload_tasks(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``workload_tasks``: each model's fused tasks as ``{key: {structural hash: weight}}``.

    The hashes are tune_state.json's task keys (a task of the same hash but another module, which
    :func:`_extract_plan` numbers ``HASH-1``, is counted under the plain hash: rare, and only ever
    used to look up a task's best time).
    """
    from .build import make_target

    target = make_target(request["tvm_target"], request["target_name"])
    out: dict[str, dict[str, int]] = {}
    for key, mod in _load_models(request, target):
        tasks: dict[str, int] = {}
        for task in ms.relax_integration.extract_tasks(mod, target):
            h = str(tvm_ffi.structural_hash(task.dispatched[0]))
            tasks[h] = tasks.get(h, 0) + int(task.weight)
        out[key] = tasks
    return {"tasks": out}


def _read_plan(path: str, plan_key: str) -> dict[str, Any] | None:
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return plan if plan.get("format") == PLAN_FORMAT and plan.get("plan_key") == plan_key else None


def _database_counts(database_dir: str, verify: bool = True) -> tuple[dict[str, int], list[int]]:
    """Records (failed candidates included) per stored workload hash, and the workload lines whose stored hash is wrong.

    The database's workload table stores each module with its structural hash; recomputing it
    (``verify``) detects a corrupted or hand-edited table, which TVM would load and apply silently.
    """
    from ofa_deploy.tuning_logs.layout import RECORD_FILE, WORKLOAD_FILE

    wl_path, rec_path = Path(database_dir) / WORKLOAD_FILE, Path(database_dir) / RECORD_FILE
    if not wl_path.is_file():
        return {}, []
    hashes, bad = [], []
    for lineno, line in enumerate(wl_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        entry = json.loads(line)
        if verify:
            try:
                ok = str(tvm_ffi.structural_hash(ms.database.Workload.from_json(entry).mod)) == entry[0]
            except Exception:  # noqa: BLE001 - an undecodable module is a corrupted line
                ok = False
            if not ok:
                bad.append(lineno)
        hashes.append(entry[0])
    counts: dict[str, int] = {}
    if rec_path.is_file():
        for line in rec_path.read_text().splitlines():
            if line.strip():
                h = hashes[json.loads(line)[0]]
                counts[h] = counts.get(h, 0) + 1
    return counts, bad


def tune_plan(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``tune_plan``: the distinct tasks (saved to ``plan_path``) and their record counts."""
    from .build import make_target

    target = make_target(request["tvm_target"], request["target_name"])
    start = time.perf_counter()
    plan = _read_plan(request["plan_path"], request["plan_key"])
    reused = plan is not None
    if plan is None:
        plan = _extract_plan(request, target)
        Path(request["plan_path"]).parent.mkdir(parents=True, exist_ok=True)
        plan_path = Path(request["plan_path"])
        tmp = plan_path.with_name(f"{owner_tag()}{plan_path.name}.tmp")  # swept by the next run if we die
        Path(tmp).write_text(json.dumps(plan))
        os.replace(tmp, request["plan_path"])
        log.info("plan: %d tasks extracted from %d workloads, %d distinct (%.1f s)", plan["extracted_tasks"],
                 len(request["models"]), len(plan["tasks"]), time.perf_counter() - start)
    counts, bad = _database_counts(request["database_dir"])
    tasks = [{k: v for k, v in t.items() if k != "mod"} for t in plan["tasks"]]
    for t in tasks:
        # The database keys workloads by the hash of the task module: the plain hash (a "-n"
        # suffix marks a rare hash collision, whose records cannot be told apart here).
        t["records"] = counts.get(t["hash"], 0)
    return {"tasks": tasks, "extracted_tasks": plan["extracted_tasks"], "reused_plan": reused,
            "bad_workload_lines": bad, "tvm_target": json.loads(str(target)),
            "plan_seconds": round(time.perf_counter() - start, 3)}




def _new_records(path: Path, offset: int) -> tuple[int, int]:
    """(records appended after byte ``offset``, how many of them are failed candidates)."""
    if not path.is_file():
        return 0, 0
    with open(path, "rb") as f:
        f.seek(offset)
        lines = [line for line in f.read().split(b"\n") if line.strip()]
    failed = 0
    for line in lines:
        try:
            failed += min(json.loads(line)[1][1] or [FAILED_RUN_SECS]) >= FAILED_RUN_SECS
        except (ValueError, IndexError, TypeError):
            pass  # a torn last line: the parent's repair drops it
    return len(lines), failed


def _alloc_arguments(session: Any, device: Any, args_info: Any, alloc_repeat: int) -> list[Any]:
    """MetaSchedule's RPC argument allocation, also for device runtimes built without USE_RANDOM.

    The default fills the arguments with the device's ``tvm.contrib.random``, which a
    runtime-only build (the C++ server of examples/deploy_cpp, many board installs) lacks, and
    every candidate then fails to run. Without it the values are drawn here and copied over:
    the timing does not depend on them. Runs in the RPC runner's process.
    """
    import numpy as np
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    try:
        fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
    except AttributeError:
        rng = np.random.default_rng(0)

        def fill(arr: Any) -> None:
            dtype = str(arr.dtype)
            data = rng.uniform(-1, 1, arr.shape) if dtype.startswith("float") else rng.integers(0, 8, arr.shape)
            arr.copyfrom(data.astype(dtype))

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def _cleanup(session: Any, remote_path: str | None) -> None:
    """Remove the uploaded candidate from the device; a refusal is logged, never a failed trial.

    MetaSchedule's default also removes ``""`` (the session directory), which the C++ server
    of examples/deploy_cpp refuses; the candidate had been measured by then, and a cleanup
    error would discard its timing. Runs in the RPC runner's process.
    """
    if session is None or remote_path is None:
        return
    for path in (remote_path, remote_path + ".so"):
        try:
            session.remove(path)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.debug("could not remove %s on the device: %s", path, exc)


def evaluator_config(settings: dict[str, Any]) -> ms.runner.EvaluatorConfig:
    """How each candidate is timed (``TuneSettings.cache``; the parent always resolves it).

    ``cold``: one call per sample, and before each the caches are flushed of every argument but
    the first (the kernel's input, which the previous kernel of a network has just written): the
    weights and the output come from memory, as in an inference. Timed warm, the tuner ranks the
    big early kernels by a speed they never reach in a network (BENCHMARKS "Timing with cold caches").
    """
    if settings["cache"] == "cold":
        return ms.runner.EvaluatorConfig(number=1, repeat=settings["cold_samples"], min_repeat_ms=0,
                                         enable_cpu_cache_flush=True)
    if settings["cache"] == "warm":
        return ms.runner.EvaluatorConfig(number=settings["number"], repeat=settings["repeat"],
                                         min_repeat_ms=settings["min_repeat_ms"], enable_cpu_cache_flush=False)
    raise ValueError(f"settings.cache must be cold or warm, got {settings['cache']!r}")


def _runner(request: dict[str, Any]) -> ms.runner.Runner:
    settings = request["settings"]
    evaluator = evaluator_config(settings)
    rpc = request.get("rpc")
    if rpc:
        config = ms.runner.RPCConfig(tracker_host=rpc["host"], tracker_port=int(rpc["port"]),
                                     tracker_key=rpc["key"], session_priority=1,
                                     session_timeout_sec=int(settings["runner_timeout_s"]))
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1,
                                   f_alloc_argument=_alloc_arguments, f_cleanup=_cleanup, initializer=_popen_init)
    return ms.runner.LocalRunner(timeout_sec=settings["runner_timeout_s"], evaluator_config=evaluator,
                                 initializer=_popen_init)


def tune_chunk(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``tune_chunk``: tune the plan's tasks ``indices`` into ``database_dir``."""
    start = time.perf_counter()
    from ofa_deploy.tuning_logs.layout import COST_MODEL_FILE, RECORD_FILE

    from .build import make_target

    target = make_target(request["tvm_target"], request["target_name"])
    if target.kind.name == "llvm":
        _cpu_intrinsics_only()
    import tvm.s_tir.tensor_intrin  # noqa: F401 - registers the intrinsics the schedule rules use

    settings = request["settings"]
    plan = json.loads(Path(request["plan_path"]).read_text())
    chosen = [plan["tasks"][i] for i in request["indices"]]
    names = [f"{t['index']:03d}_{t['name']}" for t in chosen]
    loggers = ms.logging.get_loggers_from_work_dir(request["log_dir"], names)
    seeds = ms.utils.fork_seed(int(settings["seed"]) + int(request["indices"][0]), n=len(chosen))
    threads = int(settings.get("search_threads") or os.cpu_count() or 1)
    contexts = [
        ms.TuneContext(
            mod=tvm.ir.load_json(t["mod"]), target=target, space_generator="post-order-apply",
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=settings["population_size"], init_min_unmeasured=settings["init_min_unmeasured"],
                genetic_num_iters=settings["genetic_num_iters"]),
            task_name=name, logger=logger, rand_state=seed, num_threads=threads).clone()
        for t, name, logger, seed in zip(chosen, names, loggers, seeds)]
    db_dir = Path(request["database_dir"])
    database = _open_database(db_dir)
    record_file = db_dir / RECORD_FILE
    offset = record_file.stat().st_size if record_file.is_file() else 0
    cost_model = _load_cost_model(db_dir / COST_MODEL_FILE, threads)
    artifacts = tempfile.mkdtemp(prefix="ofa_deploy_tune_")
    builder = _PoolBuilder(timeout_sec=settings["builder_timeout_s"], linker=request["linker"], out_dir=artifacts)
    seeded = 0
    try:
        runner = _runner(request)
        setup_s = time.perf_counter() - start
        log.info("chunk of %d tasks ready in %.1f s; tuning up to %d trials", len(chosen), setup_s,
                 request["max_trials_global"])
        tune_start = time.perf_counter()
        allotted = request.get("remaining") or [int(request["max_trials_per_task"])] * len(contexts)
        polish = bool(request.get("polish"))
        seeds = _warm_start(contexts, allotted, request, database, target, builder, runner,
                            int(settings["warm_start"]), polish=polish)
        seeded = sum(seeds)
        # MetaSchedule caps every task at one max_trials_per_task: the smallest allotment left after the
        # seeds, so that no task measures more than it was allotted (a task short of its allotment gets
        # the rest in the parent's next round); a task its seeds used up is not searched.
        left = [(c, float(t["weight"]), n - k) for c, t, n, k in zip(contexts, chosen, allotted, seeds) if n > k]
        per_task = min((n for _, _, n in left), default=0)
        remaining = min(int(request["max_trials_global"]) - seeded, per_task * len(left))
        if remaining > 0 and per_task > 0 and not polish:
            ms.tune_tasks(
                tasks=[c for c, _, _ in left], task_weights=[w for _, w, _ in left], work_dir=request["log_dir"],
                max_trials_global=remaining, max_trials_per_task=per_task,
                num_trials_per_iter=int(settings["num_trials_per_iter"]), builder=builder, runner=runner,
                database=database, cost_model=cost_model, task_scheduler="gradient")
        tune_s = time.perf_counter() - tune_start
        _save_cost_model(cost_model, db_dir / COST_MODEL_FILE)
    finally:
        builder.shutdown()
        shutil.rmtree(artifacts, ignore_errors=True)
    added, failed = _new_records(record_file, offset)
    return {"setup_seconds": round(setup_s, 3), "tune_seconds": round(tune_s, 3), "records_added": added,
            "records_failed": failed, "seed_records": seeded, "first_build_error": builder.first_error,
            "best_seconds": _best_seconds(database, [c.mod for c in contexts], [t["hash"] for t in chosen]),
            "records": {t["hash"]: n for t, n in zip(chosen, _chunk_records(db_dir, chosen))}}


def _open_database(db_dir: Path) -> Any:
    """The chunk's JSONDatabase; records that no longer load are dropped first (warned), not fatal.

    TVM replays every record's trace against its workload when it opens a database, and one line
    that fails makes the whole database unloadable, for this chunk, every later one and every
    build. The seeds are checked before they are measured (:func:`.seeds.loads_back`); this is the
    net under that check.
    """
    from ofa_deploy.tuning_logs.layout import RECORD_FILE, WORKLOAD_FILE

    paths = str(db_dir / WORKLOAD_FILE), str(db_dir / RECORD_FILE)
    try:
        return ms.database.JSONDatabase(*paths, allow_missing=True)
    except RuntimeError as exc:
        log.warning("%s does not load (%s); dropping the records that fail to replay", db_dir,
                    str(exc).splitlines()[-1][:200])
    workloads = [ms.database.Workload.from_json(json.loads(line))
                 for line in (db_dir / WORKLOAD_FILE).read_text().splitlines() if line.strip()]
    kept, dropped = [], 0
    for line in (db_dir / RECORD_FILE).read_text().splitlines():
        try:
            index, body = json.loads(line)
            ms.database.TuningRecord.from_json(body, workloads[index])
            kept.append(line)
        except (RuntimeError, ValueError, IndexError, TypeError):
            dropped += 1
    write_text(db_dir / RECORD_FILE, "".join(line + "\n" for line in kept))
    log.warning("%s: dropped %d record(s) that did not replay against their workload; kept %d", db_dir, dropped,
                len(kept))
    return ms.database.JSONDatabase(*paths, allow_missing=True)


def _chunk_records(db_dir: Path, chosen: list[dict[str, Any]]) -> list[int]:
    """Each chosen task's records in the database now (MetaSchedule's task scheduler, not the
    parent, decides how a chunk's trials spread over its tasks)."""
    counts, _ = _database_counts(str(db_dir), verify=False)
    return [counts.get(t["hash"], 0) for t in chosen]


def _load_cost_model(path: Path, threads: int) -> Any:
    """The device's XGBoost cost model, trained by every earlier chunk and run (a fresh one the first time).

    A model that starts each chunk empty predicts at random until it has ~100 measurements
    (``num_warmup_samples``): with chunks of a few hundred trials that was most of every chunk.
    Kept beside the database it describes, so it never mixes two devices' timings.
    """
    model = ms.cost_model.XGBModel(num_tuning_cores=threads, tree_method="auto")
    if path.is_file():
        try:
            model.load(str(path))
        except Exception as exc:  # noqa: BLE001 - a damaged model costs its history, not the run
            log.warning("cost model %s unreadable (%s): starting a new one", path, exc)
            model = ms.cost_model.XGBModel(num_tuning_cores=threads, tree_method="auto")
    return model


def _save_cost_model(model: Any, path: Path) -> None:
    if model.booster is None:
        return  # nothing learnt (too few measurements)
    tmp = path.with_name(f"{owner_tag()}{path.name}.tmp")  # swept by the next tune if we die
    try:
        model.save(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _warm_start(contexts: list[Any], allotted: list[int], request: dict[str, Any], database: Any, target: Any,
                builder: Any, runner: Any, per_task: int, *, polish: bool = False) -> list[int]:
    """Measure seed schedules (seeds.py); seeds committed per task.

    Without ``polish``: the tasks that have no records here yet. On CPUs each first measures the
    rule schedule (whatever ``per_task``, 0 included: a task's best record is then never slower
    than what a build without a database emits), then up to ``per_task`` seeds from other
    databases. Seeds are trials: a task gets at most half of its ``allotted`` trials as those
    (the search needs the rest to improve on them), and the chunk's search budget shrinks by what
    they used. With ``polish`` (a chunk of tasks tuned here already, no search): every task, up to
    ``per_task`` seeds it has not measured, and the rule if it has not measured that either.
    """
    from .schedules import RecordIndex, target_cores
    from .seeds import measure_seeds, measured_traces, rule_seed, seed_schedules, trace_key

    chosen = (list(range(len(contexts))) if polish
              else [i for i, c in enumerate(contexts) if not database.has_workload(c.mod)])
    with_rule = target.kind.name == "llvm"  # GPUs: DLight schedules what the database misses, not the rule
    if not chosen or (per_task < 1 and not with_rule):
        return [0] * len(contexts)
    own = RecordIndex(label="own", database=database) if len(database) else None
    others = [RecordIndex.open(path, label) for label, path in request.get("transfer_databases") or []]
    tasks, rules, cores = {}, 0, target_cores(target)
    for i in chosen:
        measured = measured_traces(database, contexts[i].mod)
        rule = rule_seed(contexts[i].mod, cores, measured) if with_rule else []
        rules += len(rule)
        limit = per_task if polish else min(per_task, max(1, allotted[i] // 2))
        more = (seed_schedules(contexts[i].mod, own, others, limit, measured | {trace_key(s.trace) for s in rule})
                if per_task >= 1 else [])
        tasks[i] = rule + more
    n = measure_seeds([(contexts[i].mod, schedules) for i, schedules in tasks.items()], target, builder, runner,
                      database)
    log.info("%s: %d seed schedules for %d tasks (%d of them the rule's)", "polish" if polish else "warm start", n,
             len(chosen), rules)
    return [len(tasks.get(i, [])) for i in range(len(contexts))]


def _best_seconds(database: Any, mods: list[Any], hashes: list[str]) -> dict[str, float | None]:
    """Each task's best measured seconds in the database after this chunk (None: nothing ran)."""
    best: dict[str, float | None] = {}
    for mod, key in zip(mods, hashes):
        secs = None
        if database.has_workload(mod):
            top = database.get_top_k(database.commit_workload(mod), 1)
            if top and top[0].run_secs:
                secs = min(float(x) for x in top[0].run_secs)
                secs = None if secs >= FAILED_RUN_SECS else secs
        best[key] = secs
    return best
