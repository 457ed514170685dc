"""Latency of our compiled module vs ONNX Runtime vs PyTorch eager: same run, same machine, same threads.

For the max, a middle and the min subnet (batch 1, medians), prints a table with ratios to ONNX
Runtime and each runtime's fraction of the machine's fp32 peak, and rewrites the matching section
of BENCHMARKS.md. Two TVM builds: "no database" (no tuning anywhere: rule-based schedules) and
"tuned" (what ``ofa-deploy compile`` emits here: this CPU's database from tuning_logs/, the
nearest other devices' schedules for what it lacks); the table says where the tuned build's
schedules came from.

    python bench/compare_runtimes.py --threads 2
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ofa_deploy.compile import build_module, time_local
from ofa_deploy.export import INPUT_NAME, export_onnx, seeded_input
from ofa_deploy.search_space import SubnetConfig, random_subnet
from ofa_deploy.search_space.costs import count_costs
from ofa_deploy.targets import get_target
from ofa_deploy.tuning_logs.database import default_database, transfer_databases
from ofa_deploy.tuning_logs.identity import host_identity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import update_benchmarks_md  # noqa: E402

# All at 224: the resolution the shipped x86 database is tuned for (`ofa-deploy tune` default).
SUBNETS = {
    "max (k7 e6 d4 @224)": SubnetConfig.uniform(7, 6, 4, 224),
    "mid (k5 e4 d3 @224)": SubnetConfig.uniform(5, 4, 3, 224),
    "min (k3 e3 d2 @224)": SubnetConfig.uniform(3, 3, 2, 224),
}


def median_ms(fn, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def bench_one(cfg: SubnetConfig, threads: int, repeat: int, work: Path, *, database: Path | None = None,
              transfer: list[tuple[str, Path]] | None = None,
              runtimes: tuple[str, ...] = ("pytorch", "onnxruntime", "tvm_untuned", "tvm_tuned"),
              rounds: int = 3) -> dict:
    """Medians (ms) of ``runtimes`` for one subnet: every module built first, then timed in turns.

    ``tvm_tuned`` is built as ``ofa-deploy compile`` builds: this device's ``database`` (default:
    its tuning_logs folder) and, for what it lacks, the other devices' ``transfer`` databases
    (default: the nearest shipped ones); ``tvm_untuned`` is a build with no database anywhere: every
    function takes the rule-based default schedule (compile/worker/schedules.py).

    A shared VM runs slow for tens of seconds at a time (BENCHMARKS.md, "Two threads are
    noisier"), so one runtime timed once can land in a slow stretch its rival missed. Each runtime
    is timed in ``rounds`` turns, interleaved (ORT, TVM, ORT, TVM, ...), and keeps its fastest median:
    both sides get the same chances at the machine's fast state.
    """
    import onnxruntime as ort

    model = random_subnet(cfg, seed=0)  # latency does not depend on weight values
    onnx_path = work / f"{cfg.id}.onnx"
    export_onnx(model, cfg.image_size, onnx_path)
    x = seeded_input((1, 3, cfg.image_size, cfg.image_size))
    timers: dict[str, object] = {}
    row: dict = {}
    if "pytorch" in runtimes:
        xt = torch.from_numpy(x)

        def run_torch() -> float:
            torch.set_num_threads(threads)
            with torch.no_grad():
                return median_ms(lambda: model(xt), 10, repeat)

        timers["pytorch"] = run_torch
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    timers["onnxruntime"] = lambda: median_ms(lambda: session.run(None, {INPUT_NAME: x}), 10, repeat)
    spec = get_target("x86-host")
    shape = (1, 3, cfg.image_size, cfg.image_size)
    tvm_repeat = max(3, repeat // 5)  # each sample is 3 runs
    if "tvm_untuned" in runtimes:
        untuned = build_module(onnx_path, spec, work / f"{cfg.id}.so", input_name=INPUT_NAME, input_shape=shape,
                               transfer_databases=())
        timers["tvm_untuned"] = lambda: time_local(untuned.so_path, x, repeat=tvm_repeat, number=3,
                                                   num_threads=threads).median_ms
    if "tvm_tuned" in runtimes:
        database = default_database(spec.name) if database is None else database
        transfer = transfer_databases(spec.name) if transfer is None else transfer
        tuned = build_module(onnx_path, spec, work / f"{cfg.id}.tuned.so", input_name=INPUT_NAME, input_shape=shape,
                             database_dir=database, transfer_databases=transfer)
        timers["tvm_tuned"] = lambda: time_local(tuned.so_path, x, repeat=tvm_repeat, number=3,
                                                 num_threads=threads).median_ms
        row["sources"] = {k: v for k, v in tuned.schedule_sources.items() if v}
    passes: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            passes[name].append(timer())
    row.update({name: min(ms) for name, ms in passes.items()})
    row["passes"] = passes
    if "tvm_tuned" in passes:  # within a round the two were timed seconds apart: the drift mostly cancels
        row["tuned_per_round"] = statistics.median(t / o for t, o in zip(passes["tvm_tuned"], passes["onnxruntime"]))
    return row


def table(results: dict[str, dict], threads: int, peak_gflops: float | None) -> str:
    cols = ["pytorch", "onnxruntime", "tvm_untuned", "tvm_tuned"]
    heads = ["pytorch ms", "onnxruntime ms", "TVM no database ms", "TVM tuned ms"]
    lines = [f"| subnet | MMACs | {' | '.join(heads)} | TVM no database / ORT | TVM tuned / ORT | same round, median "
             "| best TVM % of fp32 peak | tuned build's schedules |",
             "|" + "---|" * (len(cols) + 7)]
    for name, row in results.items():
        macs = row["macs"]
        cells = [f"{row[c]:.2f}" if c in row else "-" for c in cols]
        best = min(row["tvm_untuned"], row.get("tvm_tuned", float("inf")))
        peak = f"{100 * 2 * macs / (best * 1e-3) / (peak_gflops * 1e9):.2f} %" if peak_gflops else "-"
        tuned_ratio = f"{row['tvm_tuned'] / row['onnxruntime']:.2f}x" if "tvm_tuned" in row else "no database"
        per_round = f"{row['tuned_per_round']:.2f}x" if "tuned_per_round" in row else "-"
        sources = ", ".join(f"{n} {k}" for k, n in row.get("sources", {}).items())
        lines.append(f"| {name} | {macs / 1e6:.1f} | {' | '.join(cells)} | {row['tvm_untuned'] / row['onnxruntime']:.2f}x | "
                     f"{tuned_ratio} | {per_round} | {peak} | {sources} |")
    ratios = [row["tvm_tuned"] / row["onnxruntime"] for row in results.values() if "tvm_tuned" in row]
    if ratios:
        geo = statistics.geometric_mean(ratios)
        lines.append(f"\nGeomean TVM tuned / ORT: **{geo:.2f}x** (no database: "
                     f"{statistics.geometric_mean([r['tvm_untuned'] / r['onnxruntime'] for r in results.values()]):.2f}x; "
                     f"same-round ratios: {statistics.geometric_mean([r['tuned_per_round'] for r in results.values() if 'tuned_per_round' in r]):.2f}x)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing turns per runtime (fastest kept)")
    parser.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    spec = get_target("x86-host")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in SUBNETS.items():
            results[name] = bench_one(cfg, args.threads, args.repeat, Path(tmp), rounds=args.rounds) | {"macs": count_costs(cfg).macs}
            print(name, {k: v for k, v in results[name].items()}, flush=True)
    text = table(results, args.threads, spec.peak_gflops_fp32)
    print(text)
    if not args.no_write:
        body = (f"Command: `python bench/compare_runtimes.py --threads {args.threads} --repeat {args.repeat} "
                f"--rounds {args.rounds}`  \n"
                f"Machine: {host_identity().describe()}; {args.threads} threads for every runtime; batch 1; medians, "
                f"fastest of {args.rounds} interleaved turns per runtime (\"same round\": the median over rounds of "
                f"tuned / ORT timed in the same round, seconds apart); "
                f"fp32 peak {spec.peak_gflops_fp32} GFLOP/s ({spec.peak_source.split(';')[0]}).\n\n{text}\n")
        # one section per CPU: figures of two CPUs never share a table
        update_benchmarks_md(f"Runtime comparison (x86 host, {host_identity().mcpu})", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
