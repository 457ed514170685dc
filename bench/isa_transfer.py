"""Do schedules tuned for one vector ISA transfer to another? Evidence on x86, where timings are real.

No ARM board is here, so the question "are x86-tuned schedules good aarch64 code?" is asked of
the nearest thing that can be timed: this CPU restricted to 128-bit SSE vectors (NEON's width:
``-mattr=-avx,-avx2,-fma,-avx512f``: the target ``x86-host:-avx,-avx2,-fma,-avx512f``, a device of
its own with its own tuning_logs folder). For each subnet @224, four modules run here in one process:

* ``full ISA, tuned``: the host target with its own database (reference);
* ``SSE, no database``: the restricted target, rule-based schedules only;
* ``SSE, transferred``: the restricted target with the full-ISA database's schedules replayed
  (what ``compile --target cortex-a76`` does with x86 databases);
* ``SSE, tuned natively``: the restricted target tuned on the subnet's own tasks (``--trials``).

Prints and records the medians and the transferred/native ratio (1.0: transfer loses nothing).

    python bench/isa_transfer.py --subnets min,mid --trials 16
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish  # noqa: E402
from compare_runtimes import SUBNETS, export_subnet  # noqa: E402

from ofa_deploy.compile import build_module, time_interleaved, turn_ratio  # noqa: E402
from ofa_deploy.compile.tune import TuneSettings, tune_target  # noqa: E402
from ofa_deploy.export import INPUT_NAME, seeded_input  # noqa: E402
from ofa_deploy.targets import get_target  # noqa: E402
from ofa_deploy.tuning_logs.database import default_database, transfer_databases  # noqa: E402
from ofa_deploy.tuning_logs.identity import host_identity  # noqa: E402
from ofa_deploy.workloads import net_key  # noqa: E402

SSE_ONLY = "-avx,-avx2,-fma,-avx512f"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subnets", default="min,mid")
    parser.add_argument("--trials", type=int, default=16, help="native tuning trials per task of the SSE target")
    parser.add_argument("--calls", type=int, default=100, help="calls per module, the four modules in turns")
    parser.add_argument("--work", type=Path, default=None, help="keep the native SSE database here (resumable)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    me = host_identity()
    full = get_target("x86-host")
    sse = get_target(f"llvm -mcpu={me.mcpu} -mattr={SSE_ONLY}")
    full_db = default_database("x86-host")
    sources = ([("x86-host", full_db)] if full_db is not None else []) + transfer_databases("x86-host")
    if not sources:
        raise SystemExit("no x86 database to transfer from: tune x86-host first")
    work = args.work or Path(tempfile.mkdtemp(prefix="isa_transfer_"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in SUBNETS.items():
            if name.split()[0] not in args.subnets.split(","):
                continue
            k, e = cfg.ks[0], cfg.e[0]
            _, onnx_path = export_subnet(cfg, Path(tmp))
            x = seeded_input((1, 3, cfg.image_size, cfg.image_size))
            # a uniform subnet's tasks are those of the cover net of its kernel and expand (workloads.cover_nets)
            native_db = work / f"sse-{sse.data_layout}-{cfg.id}"
            tune_target(f"llvm -mcpu={me.mcpu} -mattr={SSE_ONLY}",
                        database_dir=native_db, resolutions=(cfg.image_size,), trials_per_task=args.trials,
                        keys=(net_key(cfg.image_size, k, e),), settings=TuneSettings(warm_start=0),
                        progress=False)
            builds = {
                "full ISA, tuned": dict(target=full, database_dir=full_db, transfer_databases=sources[1:]),
                "SSE, no database": dict(target=sse, database_dir=None, transfer_databases=()),
                "SSE, transferred": dict(target=sse, database_dir=None, transfer_databases=sources),
                "SSE, tuned natively": dict(target=sse, database_dir=native_db, transfer_databases=()),
            }
            row, modules = {"subnet": name}, []
            for label, kw in builds.items():
                info = build_module(onnx_path, kw.pop("target"), Path(tmp) / f"{label}.so", input_name=INPUT_NAME,
                                    input_shape=x.shape, **kw)
                modules.append(info.so_path)
                row[label + " sources"] = {s: n for s, n in info.schedule_sources.items() if n}
            # in turns, one process: this VM's speed drifts, so only same-turn figures compare
            samples = time_interleaved(modules, x, calls=args.calls, num_threads=2)
            for label, ms in zip(builds, samples):
                row[label] = statistics.median(ms)
            row["transferred / native"] = turn_ratio(samples[2], samples[3])
            row["no database / native"] = turn_ratio(samples[1], samples[3])
            print(row, flush=True)
            rows.append(row)
    labels = ["full ISA, tuned", "SSE, no database", "SSE, transferred", "SSE, tuned natively"]
    lines = ["| subnet | " + " | ".join(f"{label} ms" for label in labels) + " | transferred / native | "
             "no database / native |", "|" + "---|" * (len(labels) + 3)]
    for r in rows:
        lines.append(f"| {r['subnet']} | " + " | ".join(f"{r[label]:.2f}" for label in labels)
                     + f" | {r['transferred / native']:.2f}x | {r['no database / native']:.2f}x |")
    geo = statistics.geometric_mean([r["transferred / native"] for r in rows])
    publish("Schedule transfer across vector ISAs (x86 proxy for ARM)", [
        f"Machine: {me.describe()}, 2 threads, batch 1, medians of {args.calls} calls per module, the four "
        "modules called in turns in one process (ratios: medians of per-turn ratios). SSE target: "
        f"`llvm -mcpu={me.mcpu} -mattr={SSE_ONLY}` (128-bit vectors, NEON's width). Transferred schedules come "
        f"from {', '.join(label for label, _ in sources)}; native tuning: {args.trials} trials per task of the "
        "subnet's own tasks, no warm start.", "\n".join(lines),
        f"Geomean transferred / natively tuned: **{geo:.2f}x**."], not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
