"""Latency of our compiled module vs ONNX Runtime vs PyTorch eager: same run, same machine, same threads.

For the max, a middle and the min subnet (batch 1, medians), prints a table with ratios to ONNX
Runtime and each runtime's fraction of the machine's fp32 peak, and rewrites the matching section
of BENCHMARKS.md. Two TVM builds: "no database" (no tuning anywhere: rule-based schedules) and
"tuned" (what ``ofa-deploy compile`` emits here: this CPU's database from tuning_logs/, the
nearest other devices' schedules for what it lacks); the table says where the tuned build's
schedules came from.

ONNX Runtime and both TVM builds run in one process, called in turns (``compile.time_interleaved``;
per turn and runtime one untimed call, then three timed: the call right after the other runtime ran
1.5-3x slow, its thread pool still spinning on the cores): this VM's speed drifts by up to 2x within
minutes, faster than runtimes timed one after the other can cancel. The ratio to ORT is the
median of per-turn ratios (each TVM call against the ORT call of the same turn); its quartiles
say how far single turns scatter. PyTorch eager is context only, timed on its own first.

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

from ofa_deploy.compile import BuildInfo, build_module, time_interleaved, turn_ratio
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


# Per turn, each runtime: SETTLE untimed calls, then BLOCK timed ones, back to back. The call right after
# the other runtime's ran 1.5-3x slow on this VM (its pool still spinning on the 2 cores): not a speed.
BLOCK, SETTLE = 3, 1


def median_ms(fn, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def export_subnet(cfg: SubnetConfig, work: Path) -> tuple[torch.nn.Module, Path]:
    """``cfg``'s network with seed-0 weights (latency does not depend on their values) and its ONNX file."""
    model = random_subnet(cfg, seed=0)
    onnx_path = work / f"{cfg.id}.onnx"
    export_onnx(model, cfg.image_size, onnx_path)
    return model, onnx_path


def build_for_host(onnx_path: Path, cfg: SubnetConfig, out: Path, *, database: Path | None = None,
                   transfer: list[tuple[str, Path]] | None = None, tuned: bool = True, own: bool = True,
                   target: str = "x86-host") -> BuildInfo:
    """``cfg``'s module for this CPU as ``ofa-deploy compile`` builds it: this device's ``database`` (default: its
    tuning_logs folder) and, for what it lacks, the other devices' ``transfer`` databases (default: the nearest
    shipped ones). ``own=False``: no database of this device (a CPU the repository has none for, before tuning).
    ``tuned=False``: no database anywhere, every function takes its rule-based default schedule. ``target``: this
    CPU as a narrower one (``x86-host:-avx512f``: its AVX2 code, as on a CPU without AVX-512)."""
    spec = get_target(target)
    shape = (1, 3, cfg.image_size, cfg.image_size)
    if not tuned:
        return build_module(onnx_path, spec, out, input_name=INPUT_NAME, input_shape=shape, transfer_databases=())
    if own and database is None:
        database = default_database(spec.name)
    return build_module(onnx_path, spec, out, input_name=INPUT_NAME, input_shape=shape,
                        database_dir=database if own else None,
                        transfer_databases=transfer_databases(spec.name) if transfer is None else transfer)


def against_ort(so_paths: list[Path], onnx_path: Path, cfg: SubnetConfig, threads: int, calls: int,
                block: int = BLOCK, settle: int = SETTLE) -> tuple[list[float], list[list[float]]]:
    """Per-call ms of ORT and of each module, all called in turns in one process with ``threads`` threads."""
    x = seeded_input((1, 3, cfg.image_size, cfg.image_size))
    *modules, ort_ms = time_interleaved(so_paths, x, onnx_paths=[onnx_path], calls=calls, block=block,
                                        settle=settle, num_threads=threads)
    return ort_ms, modules


def bench_one(cfg: SubnetConfig, threads: int, calls: int, work: Path, *, block: int = BLOCK,
              settle: int = SETTLE) -> dict:
    """Medians (ms) of ORT, the untuned and the tuned build (in turns), per-turn ratios to ORT, PyTorch eager."""
    model, onnx_path = export_subnet(cfg, work)
    row: dict = {}
    torch.set_num_threads(threads)
    xt = torch.from_numpy(seeded_input((1, 3, cfg.image_size, cfg.image_size)))
    with torch.no_grad():
        row["pytorch"] = median_ms(lambda: model(xt), 10, calls)
    untuned = build_for_host(onnx_path, cfg, work / f"{cfg.id}.so", tuned=False)
    tuned = build_for_host(onnx_path, cfg, work / f"{cfg.id}.tuned.so")
    row["sources"] = {k: v for k, v in tuned.schedule_sources.items() if v}
    ort_ms, (untuned_ms, tuned_ms) = against_ort([untuned.so_path, tuned.so_path], onnx_path, cfg, threads, calls,
                                                 block, settle)
    row.update(onnxruntime=statistics.median(ort_ms), tvm_untuned=statistics.median(untuned_ms),
               tvm_tuned=statistics.median(tuned_ms), untuned_ratio=turn_ratio(untuned_ms, ort_ms),
               tuned_ratio=turn_ratio(tuned_ms, ort_ms))
    q1, _, q3 = statistics.quantiles([t / o for t, o in zip(tuned_ms, ort_ms)], n=4)
    row["tuned_quartiles"] = (q1, q3)
    return row


def table(results: dict[str, dict], peak_gflops: float | None) -> str:
    cols = ["pytorch", "onnxruntime", "tvm_untuned", "tvm_tuned"]
    heads = ["pytorch ms", "onnxruntime ms", "TVM no database ms", "TVM tuned ms"]
    lines = [f"| subnet | MMACs | {' | '.join(heads)} | TVM no database / ORT | TVM tuned / ORT | tuned / ORT quartiles "
             "| best TVM % of fp32 peak | tuned build's schedules |",
             "|" + "---|" * (len(cols) + 7)]
    for name, row in results.items():
        macs = row["macs"]
        cells = [f"{row[c]:.2f}" if c in row else "-" for c in cols]
        best = min(row["tvm_untuned"], row["tvm_tuned"])
        peak = f"{100 * 2 * macs / (best * 1e-3) / (peak_gflops * 1e9):.2f} %" if peak_gflops else "-"
        q1, q3 = row["tuned_quartiles"]
        sources = ", ".join(f"{n} {k}" for k, n in row.get("sources", {}).items())
        lines.append(f"| {name} | {macs / 1e6:.1f} | {' | '.join(cells)} | {row['untuned_ratio']:.2f}x | "
                     f"**{row['tuned_ratio']:.2f}x** | {q1:.2f}-{q3:.2f} | {peak} | {sources} |")
    geo = statistics.geometric_mean([row["tuned_ratio"] for row in results.values()])
    geo_untuned = statistics.geometric_mean([row["untuned_ratio"] for row in results.values()])
    lines.append(f"\nGeomean TVM tuned / ORT: **{geo:.2f}x** (no database: {geo_untuned:.2f}x)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=100, help="turns")
    parser.add_argument("--block", type=int, default=BLOCK, help="timed back-to-back calls per runtime and turn")
    parser.add_argument("--settle", type=int, default=SETTLE, help="untimed calls before them, per runtime and turn")
    parser.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    spec = get_target("x86-host")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in SUBNETS.items():
            results[name] = bench_one(cfg, args.threads, args.calls, Path(tmp), block=args.block,
                                      settle=args.settle) | {
                "macs": count_costs(cfg).macs}
            print(name, results[name], flush=True)
    text = table(results, spec.peak_gflops_fp32)
    print(text)
    if not args.no_write:
        body = (f"Command: `python bench/compare_runtimes.py --threads {args.threads} --calls {args.calls} "
                f"--block {args.block} --settle {args.settle}`  \n"
                f"Machine: {host_identity().describe()}; {args.threads} threads for every runtime; batch 1. ONNX "
                f"Runtime and both TVM builds in one process, called in turns ({args.calls} turns; per turn and "
                f"runtime {args.settle} untimed call(s), then {args.block} timed, back to back); medians of the calls; "
                f"ratios to ORT: medians of per-turn ratios (quartiles: how "
                f"single turns scatter). PyTorch eager timed alone first (context only). "
                f"fp32 peak {spec.peak_gflops_fp32} GFLOP/s ({spec.peak_source.split(';')[0]}).\n\n{text}\n")
        # one section per CPU: figures of two CPUs never share a table
        update_benchmarks_md(f"Runtime comparison (x86 host, {host_identity().mcpu})", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
