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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_runtimes import SUBNETS  # noqa: E402
from vm_kernels import kernel_calls  # noqa: E402

STAGES = ((0, "stem + block 0 (112x112)"), (4, "blocks 1-4 (112 -> 56)"), (8, "blocks 5-8 (28)"),
          (12, "blocks 9-12 (14)"), (16, "blocks 13-16 (14)"), (99, "blocks 17-20 + head (7)"))


def stage_of(node: str) -> str:
    match = re.match(r"/blocks\.(\d+)/", node)
    block = int(match.group(1)) if match else (-1 if node.startswith("/first_conv") else 99)
    return next(name for last, name in STAGES if block <= last)


def tvm_convs(onnx_path: Path, size: int, runs: int) -> list[tuple[str, float]]:
    """(function, median us per call) of every convolution kernel, in execution order."""
    import tvm
    from tvm import relax

    from ofa_deploy.compile.worker.build import load_onnx, lowering_pipeline, make_target, prepare, schedule
    from ofa_deploy.export import INPUT_NAME, seeded_input
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.database import default_database, transfer_databases

    spec = get_target("x86-host")
    target = make_target(spec.tvm_target, spec.name)
    mod = prepare(load_onnx(str(onnx_path), INPUT_NAME, [1, 3, size, size]), target, spec.data_layout)
    own = default_database(spec.name)
    mod, _ = schedule(mod, target, str(own) if own else None,
                      [[label, str(path)] for label, path in transfer_databases(spec.name)])
    with target:
        vm = relax.VirtualMachine(tvm.compile(mod, target, relax_pipeline=lowering_pipeline(target)), tvm.cpu())
    x = tvm.runtime.tensor(seeded_input((1, 3, size, size)), tvm.cpu())
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
    parser.add_argument("--subnet", choices=[k.split()[0] for k in SUBNETS], default="max")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from ofa_deploy.export import export_onnx
    from ofa_deploy.search_space import random_subnet
    from ofa_deploy.tuning_logs.identity import host_identity

    cfg = next(c for k, c in SUBNETS.items() if k.split()[0] == args.subnet)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx_path = work / "m.onnx"
        export_onnx(random_subnet(cfg, seed=0), cfg.image_size, onnx_path)
        tvm_side = tvm_convs(onnx_path, cfg.image_size, args.runs)
        ort_side = ort_convs(onnx_path, cfg.image_size, args.threads, args.runs, work)
    if len(tvm_side) != len(ort_side):
        raise SystemExit(f"{len(tvm_side)} TVM convolution kernels, {len(ort_side)} ORT Conv nodes: cannot pair")
    sums: dict[str, list[float]] = {name: [0.0, 0.0] for _, name in STAGES}
    for (_, t), (node, o) in zip(tvm_side, ort_side):
        sums[stage_of(node)][0] += t
        sums[stage_of(node)][1] += o
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
