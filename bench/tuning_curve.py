"""Compiled speed against tuning minutes: TVM-tuned / ONNX Runtime at checkpoints of one tuning run.

Runs ``ofa-deploy tune --target x86-host`` (or ``--target x86-host:-avx512f``: this CPU's AVX2 code)
into ``--database`` (a fresh folder: the run starts from an empty database of this device) for
``--budget-minutes`` and copies the database at each checkpoint (tuning minutes). Then, per subnet
(max / mid / min @224), builds it with every checkpoint's copy exactly as ``ofa-deploy compile``
would (with ``--warm-start`` runs, functions the copy lacks borrow schedules from the shipped
databases, as a build does) and with no database at all (minute 0), and times all of them and ONNX
Runtime in turns in one process, same threads; reports medians and per-turn ratios to ORT, and their
geomean per checkpoint. Writes
``bench/results/tuning_curve_<cpu>[_no_<feature>][_empty].{csv,png}`` and the BENCHMARKS.md section.

    python bench/tuning_curve.py --database runs/curve-znver4 --budget-minutes 240 --checkpoints 10,30,60,120,240
    python bench/tuning_curve.py --database runs/curve-cold --warm-start 0 --budget-minutes 60 --checkpoints 10,30,60
    python bench/tuning_curve.py --target x86-host:-avx512f --database runs/avx2-db --budget-minutes 90 --checkpoints 10,30,60,90

Resumable: rerun the same command after a kill (or in a later session, with a larger
``--budget-minutes``); the tune continues, finished checkpoints stay. The clock is tuning minutes:
wall time while the tune ran, summed over runs (``curve_state.json``), so a pause between runs
does not count. With ``--evaluate-only`` it times the checkpoints already there. Measure on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, publish  # noqa: E402
from compare_runtimes import BLOCK, SETTLE, SUBNETS, against_ort, build_for_host, export_subnet  # noqa: E402

from ofa_deploy.atomic import write_json  # noqa: E402
from ofa_deploy.compile import turn_ratio  # noqa: E402
from ofa_deploy.tuning_logs.database import database_cache, repair_database, transfer_databases  # noqa: E402
from ofa_deploy.tuning_logs.folders import target_identity  # noqa: E402
from ofa_deploy.tuning_logs.layout import DATABASE_FILES, RECORD_FILE  # noqa: E402

log = logging.getLogger("tuning_curve")
STATE = "curve_state.json"


def snapshot(db: Path, dest: Path) -> None:
    """Copy the database as it is now (a torn last line, mid-append, is dropped) into ``dest``."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in DATABASE_FILES:
        if (db / name).is_file():
            shutil.copy2(db / name, tmp / name)
    if (tmp / RECORD_FILE).is_file():
        repair_database(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def tune_with_checkpoints(args: argparse.Namespace, snaps: Path) -> None:
    state_path = snaps / STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if "minutes" not in state:  # runs before the tuning-minute clock kept wall time since their start
        state = {"minutes": (time.time() - state["started"]) / 60 if "started" in state else 0.0}
    write_json(state_path, state)
    checkpoints = [m for m in args.checkpoints if not (snaps / f"{m:g}min").is_dir()]
    left = args.budget_minutes - state["minutes"]
    if left <= 0.5 or not checkpoints:
        return
    cmd = [sys.executable, "-m", "ofa_deploy.cli", "tune", "--target", args.target, "--database", str(args.database),
           "--resolutions", "224", "--budget-minutes", f"{left:.1f}", "--warm-start", str(args.warm_start),
           "--trials", str(args.trials), "--no-progress"]
    log.info("running (%.1f tuning minutes done): %s", state["minutes"], " ".join(cmd))
    proc = subprocess.Popen(cmd)
    base, start = state["minutes"], time.time()

    def minutes() -> float:  # tuning minutes so far, saved as they pass: a kill loses at most a poll
        state["minutes"] = base + (time.time() - start) / 60
        write_json(state_path, state)
        return state["minutes"]

    try:
        for m in checkpoints:
            while proc.poll() is None and minutes() < m:
                time.sleep(5)
            snapshot(args.database, snaps / f"{m:g}min")
            log.info("checkpoint %g min: %s", m, snaps / f"{m:g}min")
        proc.wait()
        minutes()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()


def evaluate(args: argparse.Namespace, snaps: Path) -> list[dict]:
    """Per subnet, every checkpoint's build and minute 0's (no database of this device: the rule schedules, or with a
    warm start the other devices' schedules and the rule for what they lack) timed against ORT, all in turns in one
    process: the curve's points share the machine's state."""
    import tempfile

    transfer = transfer_databases(args.target) if args.warm_start else []
    points = [(m, snaps / f"{m:g}min") for m in args.checkpoints if (snaps / f"{m:g}min" / RECORD_FILE).is_file()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in SUBNETS.items():
            _, onnx_path = export_subnet(cfg, Path(tmp))
            # minute 0: what compile emits before any tuning here (the rule; with a warm start the other devices'
            # schedules first)
            builds = [build_for_host(onnx_path, cfg, Path(tmp) / f"{cfg.id}.0.so", own=False, transfer=transfer,
                                     target=args.target)]
            builds += [build_for_host(onnx_path, cfg, Path(tmp) / f"{cfg.id}.{m:g}.so", database=db, transfer=transfer,
                                      target=args.target) for m, db in points]
            ort_ms, tvm_ms = against_ort([b.so_path for b in builds], onnx_path, cfg, args.threads, args.calls)
            for (m, db), build, ms in zip([(0.0, None), *points], builds, tvm_ms):
                records = sum(1 for _ in open(db / RECORD_FILE)) if db is not None else 0
                rows.append({"minutes": m, "subnet": name, "records": records, "ort_ms": statistics.median(ort_ms),
                             "tvm_ms": statistics.median(ms), "ratio": turn_ratio(ms, ort_ms),
                             "sources": {k: v for k, v in build.schedule_sources.items() if v}})
                print(rows[-1], flush=True)
    return rows


def report(rows: list[dict], args: argparse.Namespace) -> None:
    cpu = target_identity(args.target)
    narrower = "".join(f"_no_{f.lstrip('-')}" for f in cpu.mattr)  # the features switched off, as in file names
    out = REPO / "bench" / "results" / f"tuning_curve_{cpu.mcpu}{narrower}{'' if args.warm_start else '_empty'}"
    device, start = f"{cpu.mcpu}{narrower.replace('_', ' ')}", "warm start" if args.warm_start else "from an empty database"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    by_min: dict[float, list[dict]] = {}
    for r in rows:
        by_min.setdefault(r["minutes"], []).append(r)
    lines = ["| tuning minutes | records | " + " | ".join(f"{n} TVM/ORT" for n in SUBNETS) + " | geomean |",
             "|" + "---|" * (len(SUBNETS) + 3)]
    xs, ys = [], []
    for m, rs in sorted(by_min.items()):
        geo = math.exp(sum(math.log(r["ratio"]) for r in rs) / len(rs))
        xs.append(m)
        ys.append(geo)
        lines.append(f"| {m:g} | {rs[0]['records']} | " + " | ".join(f"{r['ratio']:.2f}x ({r['tvm_ms']:.2f} / "
                                                                    f"{r['ort_ms']:.2f} ms)" for r in rs)
                     + f" | **{geo:.2f}x** |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, "o-", label="geomean TVM / ORT (max, mid, min @224)")
    ax.axhline(1.0, color="gray", ls="--", label="ONNX Runtime" + (" (full ISA: not narrowed)" if cpu.mattr else ""))
    ax.set_xlabel("tuning minutes (2 cores)")
    ax.set_ylabel("latency ratio to ORT")
    ax.set_title(f"{device}, {cpu.cores} cores: {start}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    mode = (f"warm start (seeds from {', '.join(l for l, _ in transfer_databases(args.target)) or 'nothing'}; "
            "builds borrow what the checkpoint lacks)" if args.warm_start else "no other database used, no seeds")
    minute0 = "the other devices' schedules, the rule for the rest" if args.warm_start else "rule schedules"
    logs = os.environ.get("OFA_DEPLOY_TUNING_LOGS")
    env = f"Run with `OFA_DEPLOY_TUNING_LOGS={logs}` (no folder of this CPU). " if logs else ""
    timing = database_cache(args.database) if (args.database / RECORD_FILE).is_file() else "?"
    ort_isa = (" ONNX Runtime is not narrowed: MLAS picks its kernels from CPUID (no switch turns AVX-512 off), so "
               "the ratios to ORT are against wider vectors than TVM's; the ratios between rows are the fair "
               "comparison." if cpu.mattr else "")
    publish(f"Tuning curve ({device}, {start})", [
        f"Machine: {cpu.describe()}; {args.threads} threads for both runtimes; batch 1; ORT and every point's build "
        f"called in turns in one process ({args.calls} turns; per turn and runtime {SETTLE} untimed call, then "
        f"{BLOCK} timed, back to back); medians of the calls, ratios: medians of per-turn ratios; minute 0: no "
        f"database of this CPU ({minute0}). {env}"
        f"One `ofa-deploy tune --target {args.target} --resolutions 224 --budget-minutes {args.budget_minutes:g} "
        f"--trials {args.trials} --warm-start {args.warm_start}` run into an empty database, copied at each "
        f"checkpoint; {mode}; candidates timed {timing} (`tune --cache`).{ort_isa}", "\n".join(lines),
        f"Rows: `{out.relative_to(REPO)}.csv`; plot: `{out.relative_to(REPO)}.png`."], not args.no_write)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="x86-host", help="x86-host, or it narrowed: x86-host:-avx512f")
    parser.add_argument("--database", type=Path, required=True, help="fresh database folder for the run")
    parser.add_argument("--budget-minutes", type=float, default=60)
    parser.add_argument("--checkpoints", default="10,30,60")
    parser.add_argument("--warm-start", type=int, default=4)
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=200, help="turns: ORT and every checkpoint's build once each")
    parser.add_argument("--evaluate-only", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = parser.parse_args()
    args.checkpoints = [float(c) for c in args.checkpoints.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.database = args.database.resolve()
    snaps = args.database.with_name(args.database.name + "-checkpoints")
    snaps.mkdir(parents=True, exist_ok=True)
    if not args.evaluate_only:
        tune_with_checkpoints(args, snaps)
    rows = evaluate(args, snaps)
    if rows:
        report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
