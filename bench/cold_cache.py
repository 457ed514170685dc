"""Warm- vs cold-cache timing during tuning, judged where it matters: each kernel's time inside the network.

MetaSchedule times a candidate warm by default (the kernel rerun back to back, everything cached).
In a network the big early kernels never run warm: their weights and output come from memory.
For the named fused functions of one subnet (default: the max subnet's largest ones), this:

1. tunes each again with cold caches (``TuneSettings.cache = "cold"``: caches flushed of all but
   the input before each sample, one call per sample), starting from the ``--database``'s
   ``seeds`` best records, re-timed cold, then ``trials`` more candidates;
2. builds the network twice, with that database as it is and with those functions' cold-tuned
   best in their place, and times each function inside the running network (a VM instrument
   around every call), the two builds alternating, ``rounds`` rounds.

The shipped database is timed cold since 2026-12-02; the warm-timed one this was measured against
(BENCHMARKS "Timing with cold caches") is in git:

    mkdir -p /tmp/warm && for f in database_tuning_record.json.gz database_workload.json.gz tune_state.json; do
      git show 91dd51b:tuning_logs/x86_64-znver4-2c/$f > /tmp/warm/$f; done
    python bench/cold_cache.py --subnet max --trials 80 --database /tmp/warm --work runs/cold-cache

Reuses a function's cold database in ``--work`` when it has one (delete the folder to retune).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vm_kernels import SUBNET_NAMES, kernel_calls, load_vm, prepared_subnet, subnet_named  # noqa: E402

from ofa_deploy.compile.worker.tune import _cpu_intrinsics_only  # noqa: E402

_cpu_intrinsics_only()  # before anything imports tvm.s_tir.tensor_intrin

import numpy as np  # noqa: E402
import tvm  # noqa: E402
import tvm.s_tir.tensor_intrin  # noqa: E402,F401 - registers the intrinsics the schedule rules use
from tvm import s_tir  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

from ofa_deploy.compile.toolchain import linker_for  # noqa: E402
from ofa_deploy.compile.tune import TuneSettings  # noqa: E402
from ofa_deploy.compile.worker.build import make_target, schedule  # noqa: E402
from ofa_deploy.compile.worker.seeds import measure_seeds  # noqa: E402
from ofa_deploy.compile.worker.tune import _PoolBuilder, evaluator_config  # noqa: E402
from ofa_deploy.export import seeded_input  # noqa: E402
from ofa_deploy.targets import get_target  # noqa: E402
from ofa_deploy.tuning_logs.database import database_cache, default_database, resolve_database  # noqa: E402
from ofa_deploy.tuning_logs.folders import target_dir  # noqa: E402
from ofa_deploy.tuning_logs.identity import host_identity  # noqa: E402

log = logging.getLogger("cold_cache")
# The max subnet's functions that run slowest in the network against ONNX Runtime (BENCHMARKS
# "Timing with cold caches"): 1x1 16->96 @112, 7x7 s2 depthwise @112, 7x7 depthwise @56, 1x1 24->144 @56.
DEFAULT_FUNCTIONS = ("fused_conv2d3_add3_relu", "fused_conv2d4_add4_relu1", "fused_conv2d7_add6_relu2",
                     "fused_conv2d6_add6_relu2")


def cold_tune(func: tvm.tirx.PrimFunc, target: tvm.target.Target, base_db: ms.database.Database, work: Path,
              seeds: int, trials: int) -> ms.database.Database:
    """``func`` tuned with cold timing into ``work`` (its own folder), seeded with ``base_db``'s best."""
    settings = {**dataclasses.asdict(TuneSettings()), "cache": "cold"}
    runner = ms.runner.LocalRunner(evaluator_config=evaluator_config(settings))
    mod = tvm.IRModule({"main": func})
    if not (work / "database_tuning_record.json").is_file():
        (work / "artifacts").mkdir(parents=True, exist_ok=True)
        schedules = []
        for record in base_db.get_top_k(base_db.commit_workload(mod), seeds):
            sch = s_tir.Schedule(mod)
            record.trace.apply_to_schedule(sch, remove_postproc=False)
            schedules.append(sch)
        builder = _PoolBuilder(timeout_sec=120, linker=linker_for(None), out_dir=str(work / "artifacts"))
        try:
            measure_seeds([(mod, schedules)], target, builder, runner, ms.database.JSONDatabase(work_dir=str(work)))
            ms.tune_tir(mod, target, str(work), max_trials_global=trials, num_trials_per_iter=32, runner=runner,
                        builder=builder, num_tuning_cores="physical", seed=0)
        finally:
            builder.shutdown()
    return ms.database.JSONDatabase(work_dir=str(work), allow_missing=False)


def in_network_times(mods: dict[str, tvm.IRModule], target: tvm.target.Target, names: list[str], rounds: int,
                     image_size: int) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per build: each named function's median time per call inside the network (us), and the whole network (ms)."""
    dev = tvm.cpu()
    x = tvm.runtime.tensor(seeded_input((1, 3, image_size, image_size)), dev)
    vms = {label: load_vm(mod, target) for label, mod in mods.items()}
    outputs = [vm["main"](x).numpy() for vm in vms.values()]
    assert all(np.allclose(outputs[0], o, atol=1e-4) for o in outputs[1:]), "the builds disagree"
    per_call = {label: collections.defaultdict(list) for label in vms}
    whole = {label: [] for label in vms}
    for _ in range(rounds):
        for label, vm in vms.items():  # alternating: a slow stretch of a shared machine hits both builds
            whole[label].append(min(vm.time_evaluator("main", dev, number=5, repeat=3)(x).results) * 1e3)
            for run in kernel_calls(vm, x, 3):
                for symbol, us in run:
                    if symbol in names:
                        per_call[label][symbol].append(us)
    kernels = {label: {n: statistics.median(per_call[label][n]) for n in names} for label in vms}
    return kernels, {label: statistics.median(times) for label, times in whole.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subnet", choices=SUBNET_NAMES, default="max")
    parser.add_argument("--functions", default=",".join(DEFAULT_FUNCTIONS), help="fused function names")
    parser.add_argument("--database", type=Path, default=None,
                        help="the database to compare against and seed from (default: this device's)")
    parser.add_argument("--seeds", type=int, default=16, help="the database's best records re-timed cold first")
    parser.add_argument("--trials", type=int, default=80, help="cold-timed candidates tuned after the seeds")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("runs/cold-cache"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = subnet_named(args.subnet)
    names = [n for n in args.functions.split(",") if n]
    spec = get_target("x86-host")
    target = make_target(spec.tvm_target, spec.name)
    with tempfile.TemporaryDirectory() as tmp:
        mod = prepared_subnet(cfg, spec, target, Path(tmp) / "m.onnx")
    base_dir = resolve_database(args.database) if args.database else default_database(spec.name)
    if base_dir is None:
        raise SystemExit(f"no database in {args.database or spec.name}: tune one first (ofa-deploy tune)")
    timed = database_cache(args.database or target_dir(spec.name)) or "unknown"
    base_mod, _ = schedule(mod, target, str(base_dir), [])
    base_db = ms.database.JSONDatabase(work_dir=str(base_dir), allow_missing=False)
    cold_mod = tvm.IRModule(dict(base_mod.functions_items()), attrs=base_mod.attrs)
    for name in names:
        plain = mod[name].with_attr("global_symbol", "main")
        started = time.monotonic()
        cold_db = cold_tune(plain, target, base_db, args.work / name, args.seeds, args.trials)
        best = cold_db.query_schedule(tvm.IRModule({"main": plain}), target=target, workload_name="main")
        log.info("%s: cold-tuned in %.0f s", name, time.monotonic() - started)
        cold_mod[cold_mod.get_global_var(name)] = best.mod["main"].with_attrs(dict(base_mod[name].attrs.items()))
    kernels, whole = in_network_times({"base": base_mod, "cold": cold_mod}, target, names, args.rounds,
                                      cfg.image_size)
    me = host_identity()
    print(f"\n{me.model_name} ({me.mcpu}), {spec.cores} threads; {args.subnet} subnet @{cfg.image_size}; "
          f"in-network median per call, {args.rounds} rounds x 3 calls, builds alternating; the database "
          f"({base_dir}) was timed {timed}")
    print(f"| function | database, {timed}-timed (us) | re-tuned cold (us) | cold / database |\n|---|---|---|---|")
    for n in names:
        w, c = kernels["base"][n], kernels["cold"][n]
        print(f"| {n} | {w:.0f} | {c:.0f} | {c / w:.2f} |")
    print(f"| whole network (ms, median of the rounds' fastest) | {whole['base']:.2f} | {whole['cold']:.2f} | "
          f"{whole['cold'] / whole['base']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
