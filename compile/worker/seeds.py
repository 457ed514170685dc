"""Warm starts for tuning: a task's first measured candidates come from schedules that already work (worker-only).

MetaSchedule's evolutionary search starts from random samples of the design space and its
XGBoost model predicts at random until ~100 candidates are measured, so a fresh task spends its
first trials finding what a neighbouring task already knows. Before the search, each task that
has no records of its own here measures a few *seed* schedules:

0. on CPUs, the rule schedule a build uses where no database helps (:func:`.schedules.rule_schedule`),
   whatever ``--warm-start``: a task with a handful of random trials otherwise replaced a good
   rule schedule with a worse measured one, and a 10-minute database ran 1.77x ORT where no
   database ran 1.38x (BENCHMARKS "Tuning curve"); measured, the rule is the floor of every task;
1. the best records of the same workload in other devices' databases (another CPU tuned it:
   its schedule is usually good here too, see BENCHMARKS "Tuning");
2. the best records of its structural siblings (same blocks, other shapes: another resolution,
   kernel size or width), this device's first, their tile sizes re-fitted (:mod:`.schedules`).

Seeds are measured like any candidate and committed as this device's records, so the search's
initial population takes them from the database (``init_measured_ratio``) and the cost model
learns from them; a seed that fails to build or run is a failed record, as any candidate.

A task tuned here already is *polished* the same way, once (``tune`` does it before its rounds):
the search can settle in a poor region (one 1x1 convolution of the space converged at 26 GFLOP/s
while its siblings ran at 120-180), and a sibling's schedule re-fitted to it is often 2x faster
(BENCHMARKS "Sibling polish"). A seed whose trace the task has measured already is skipped.
"""

from __future__ import annotations

import logging
from typing import Any

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from .schedules import MAX_SIBLINGS_TRIED, SCHEDULE_ERRORS, RecordIndex, replay, rule_schedule

log = logging.getLogger(__name__)


def trace_key(trace: Any) -> str:
    """A schedule's identity within its task: its instructions and decisions (postprocessors left out)."""
    return str(trace.as_json(remove_postproc=True))


def measured_traces(database: Any, mod: tvm.IRModule) -> set[str]:
    """The :func:`trace_key` of every schedule of task ``mod`` measured in ``database`` (failed ones too)."""
    if not database.has_workload(mod):
        return set()
    workload = database.commit_workload(mod)  # present: returns it without writing
    return {trace_key(rec.trace) for rec in database.get_top_k(workload, 1 << 20)}


def loads_back(sch: Any, mod: tvm.IRModule) -> bool:
    """Whether a record of ``sch`` would load again as a record of ``mod``: what ``JSONDatabase`` does
    with each line when it opens (it replays the trace against the stored workload).

    One line that fails there makes the whole database unloadable (``parallel_for_dynamic error``
    in every later chunk and build). Seen: a sibling's trace naming a block (``compute``) that the
    stored workload, structurally equal to the task, names otherwise.
    """
    workload = ms.database.Workload(mod)
    try:
        record = ms.database.TuningRecord(sch.trace, workload, None, None, None)
        ms.database.TuningRecord.from_json(record.as_json(), workload)
        return True
    except SCHEDULE_ERRORS as exc:
        log.debug("seed dropped, its record would not load back: %s", str(exc).splitlines()[-1][:200])
        return False


def rule_seed(mod: tvm.IRModule, cores: int, measured: set[str] = frozenset()) -> list[Any]:
    """Task ``mod``'s rule schedule as a seed (a list of one), or none: the rule changes nothing, does not
    apply, or is ``measured`` here already."""
    try:
        sch = rule_schedule(mod["main"], cores)
    except SCHEDULE_ERRORS as exc:
        log.debug("rule schedule does not apply: %s", str(exc).splitlines()[-1][:200])
        return []
    return [] if sch is None or trace_key(sch.trace) in measured else [sch]


def seed_schedules(mod: tvm.IRModule, own: RecordIndex | None, others: list[RecordIndex], limit: int,
                   measured: set[str] = frozenset()) -> list[Any]:
    """Up to ``limit`` distinct schedules (``s_tir.Schedule``) for task ``mod``, best sources first,
    none of them already ``measured`` here (:func:`measured_traces`)."""
    func = mod["main"]
    found: list[Any] = []
    seen: set[int] = set()

    def add(sch: Any) -> None:
        key = int(tvm_ffi.structural_hash(sch.mod))
        if key not in seen and len(found) < limit and trace_key(sch.trace) not in measured:
            seen.add(key)
            found.append(sch)

    for index in others:  # the same workload, measured on another device
        if index.database.has_workload(mod):
            workload = index.database.commit_workload(mod)  # present: returns it without writing
            for rec in index.database.get_top_k(workload, 2):
                try:
                    sch = tvm.s_tir.Schedule(mod)
                    rec.trace.apply_to_schedule(sch, remove_postproc=False)
                    add(sch)
                except SCHEDULE_ERRORS as exc:
                    log.debug("%s's record did not replay: %s", index.label, str(exc).splitlines()[-1][:200])
    for index in ([own] if own is not None else []) + others:
        for _, entry in index.siblings(func, exclude_identical=True)[:MAX_SIBLINGS_TRIED]:
            if len(found) >= limit:
                return found
            try:
                add(replay(func, entry.record.trace))
            except SCHEDULE_ERRORS as exc:
                log.debug("sibling of %s did not replay: %s", index.label, str(exc).splitlines()[-1][:200])
    return found


def measure_seeds(tasks: list[tuple[tvm.IRModule, list[Any]]], target: tvm.target.Target, builder: Any,
                  runner: Any, database: Any) -> int:
    """Build and run every seed, commit each as a record of its task; returns the records committed.

    A seed whose record would not load back against the workload the database files it under is
    dropped unmeasured (:func:`loads_back`): the database matches workloads structurally, and a
    structurally equal workload from an earlier run can name its blocks otherwise.
    """
    inputs, owners = [], []
    for mod, schedules in tasks:
        stored = database.commit_workload(mod).mod  # the one already there, if any: records load against it
        for sch in schedules:
            if loads_back(sch, stored):
                inputs.append(ms.builder.BuilderInput(sch.mod, target))
                owners.append((mod, sch))
    if not inputs:
        return 0
    built = builder.build(inputs)
    runnable = [(i, r) for i, r in enumerate(built) if r.error_msg is None]
    device = "cuda" if target.kind.name == "cuda" else "cpu"
    futures = runner.run([ms.runner.RunnerInput(r.artifact_path, device,
                                                ms.arg_info.ArgInfo.from_entry_func(owners[i][1].mod))
                          for i, r in runnable])
    run_secs: dict[int, list[float]] = {}
    for (i, _), future in zip(runnable, futures):
        result = future.result()
        run_secs[i] = [float(s) for s in result.run_secs] if result.error_msg is None else [1e10]
    committed = 0
    for i, (mod, sch) in enumerate(owners):
        workload = database.commit_workload(mod)
        secs = run_secs.get(i, [1e10])  # a failed build is a failed record, as in MetaSchedule
        database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, workload, secs, target, ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
        committed += 1
    return committed
