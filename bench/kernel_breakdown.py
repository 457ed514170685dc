"""Where the compiled network loses to ONNX Runtime: every convolution's time inside the running network, by stage.

TVM: the module ``ofa-deploy compile`` builds here (this device's database), each kernel timed by
a VM instrument (bench/vm_kernels.py); ORT: its own node profiler. Both run the same ONNX with the
same threads; the i-th convolution kernel of one is the i-th of the other (both fuse bias and
activation into the convolution). Stages follow the network: stem and first block, then the
blocks of each resolution.

    python bench/kernel_breakdown.py --subnet max --threads 2
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vm_kernels import SUBNET_NAMES, kernel_calls, load_vm, prepared_subnet, subnet_named  # noqa: E402

# Output resolution of each stage as a fraction of the image (MobileNetV3: stem /2, stages /4 /8 /16 /16 /32).
STAGE_DIVISORS = (4, 8, 16, 16, 32)


def stages(cfg: Any) -> list[tuple[int, str]]:
    """(last block index, label) of the stem + first block and of each stage, for ``cfg``'s depths.

    The exported subnet numbers its active blocks 0, 1, 2, ... (block 0 is the first block), so
    a stage's blocks depend on the depths of the stages before it.
    """
    r = cfg.image_size
    found, last = [(0, f"stem + block 0 ({r // 2}x{r // 2})")], 0
    for i, (depth, div) in enumerate(zip(cfg.d, STAGE_DIVISORS)):
        first, last = last + 1, last + depth
        size = f"{r // (div // 2)} -> {r // div}" if i == 0 else f"{r // div}"
        found.append((last, f"blocks {first}-{last} ({size})" + (" + head" if i == len(cfg.d) - 1 else "")))
    return found


def stage_of(node: str, table: list[tuple[int, str]]) -> str:
    """The label of the stage an ORT node belongs to (the stem before block 0, the head after the last block)."""
    match = re.match(r"/blocks\.(\d+)/", node)
    block = int(match.group(1)) if match else (-1 if node.startswith("/first_conv") else table[-1][0])
    return next(name for last, name in table if block <= last)


def tvm_convs(cfg: Any, onnx_path: Path, runs: int) -> list[tuple[str, float]]:
    """(function, median us per call) of every convolution kernel of ``cfg`` (its ONNX written to ``onnx_path``),
    in execution order."""
    import tvm

    from ofa_deploy.compile.worker.build import make_target, schedule
    from ofa_deploy.export import seeded_input
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.database import default_database, transfer_databases

    spec = get_target("x86-host")
    target = make_target(spec.tvm_target, spec.name)
    own = default_database(spec.name)
    mod, _ = schedule(prepared_subnet(cfg, spec, target, onnx_path), target, str(own) if own else None,
                      [[label, str(path)] for label, path in transfer_databases(spec.name)])
    vm = load_vm(mod, target)
    x = tvm.runtime.tensor(seeded_input((1, 3, cfg.image_size, cfg.image_size)), tvm.cpu())
    for _ in range(10):
        vm["main"](x)
    runs_calls = kernel_calls(vm, x, runs)
    return [(name, statistics.median(run[i][1] for run in runs_calls))
            for i, (name, _) in enumerate(runs_calls[0]) if "conv2d" in name]


def ort_convs(onnx_path: Path, size: int, threads: int, runs: int, work: Path) -> list[tuple[str, float]]:
    """(node, median us per run) of every Conv node, in execution order."""
    import onnxruntime as ort

    from ofa_deploy.export import INPUT_NAME, seeded_input

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling, options.profile_file_prefix = True, str(work / "ort")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = seeded_input((1, 3, size, size))
    for _ in range(10 + runs):
        session.run(None, {INPUT_NAME: x})
    times: dict[str, list[float]] = collections.defaultdict(list)
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and \
                event["args"].get("op_name") == "Conv":
            times[event["name"][:-len("_kernel_time")]].append(event["dur"])
    return [(node, statistics.median(d[10:])) for node, d in times.items()]  # first 10: warm-up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subnet", choices=SUBNET_NAMES, default="max")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from ofa_deploy.tuning_logs.identity import host_identity

    cfg = subnet_named(args.subnet)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx_path = work / "m.onnx"
        tvm_side = tvm_convs(cfg, onnx_path, args.runs)  # writes the ONNX that ORT then runs
        ort_side = ort_convs(onnx_path, cfg.image_size, args.threads, args.runs, work)
    if len(tvm_side) != len(ort_side):
        raise SystemExit(f"{len(tvm_side)} TVM convolution kernels, {len(ort_side)} ORT Conv nodes: cannot pair")
    table = stages(cfg)
    sums: dict[str, list[float]] = {name: [0.0, 0.0] for _, name in table}
    for (_, t), (node, o) in zip(tvm_side, ort_side):
        sums[stage_of(node, table)][0] += t
        sums[stage_of(node, table)][1] += o
    me = host_identity()
    print(f"{me.model_name} ({me.mcpu}), {args.threads} threads; {args.subnet} subnet @{cfg.image_size}; "
          f"convolution kernels inside the network, median of {args.runs} runs")
    print("| stage | TVM tuned (us) | ORT (us) | TVM / ORT |\n|---|---|---|---|")
    for name, (t, o) in sums.items():
        print(f"| {name} | {t:.0f} | {o:.0f} | {t / o:.2f} |")
    t, o = sum(v[0] for v in sums.values()), sum(v[1] for v in sums.values())
    print(f"| all convolutions | {t:.0f} | {o:.0f} | {t / o:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
