"""Our CUDA modules on a real GPU: compiled here (no GPU needed), checked and timed on the GPU machine.

Two steps, because the machine that compiles (TVM's compiler, nvcc) is not the one with the GPU:

    python bench/cuda_on_gpu.py prepare --target cuda-sm90 --out .gpu/bundle      # here: max/mid/min @224, 2 variants
    python bench/cuda_on_gpu.py run --bundle .gpu/bundle --out RESULTS             # there: TVM runtime only

``run`` does what a user does on the GPU box: ``ofa-deploy check`` on every folder (``device_check``:
the recorded PyTorch logits through ``subnet.so``, then TVM's time_evaluator on the GPU) for both
variants compile builds (one captured CUDA graph, the default; ``--no-cuda-graph``: kernel by
kernel), then times PyTorch on the same GPU, eager and replaying a CUDA graph (CUDA events; cuDNN
autotuned; fp32, batch 1), and writes ``cuda_on_gpu.json`` + a markdown table with the GPU's name.
Both runtimes are timed in the same process, one after the other (a dedicated GPU does not drift
as a shared VM's CPU does).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ofa_deploy.search_space import SubnetConfig  # noqa: E402

from compare_runtimes import SUBNETS as RUNTIME_SUBNETS  # noqa: E402

SUBNETS = {name.split()[0]: cfg for name, cfg in RUNTIME_SUBNETS.items()}  # max, mid, min @224, as the CPU comparison
log = logging.getLogger("cuda_on_gpu")


VARIANTS = {"graph": True, "kernels": False}  # compile's default (one captured CUDA graph) / --no-cuda-graph


def prepare(target: str, out: Path, names: list[str]) -> None:
    """Compile the subnets for ``target`` in both variants, the shipped supernet's weights (compile-only here)."""
    from ofa_deploy.deploy import CompileOptions, compile_subnet

    for name in names:
        for variant, graph in VARIANTS.items():
            compile_subnet(SUBNETS[name], CompileOptions(target=target, out_dir=str(out / f"{name}-{variant}"),
                                                         cuda_graph=graph))
            log.info("compiled %s (%s, %s) for %s", name, SUBNETS[name].id, variant, target)


def gpu_ms(call, repeat: int, number: int) -> float:
    """Median ms per call over ``repeat`` samples of ``number`` back-to-back calls, timed with CUDA events."""
    import torch

    samples = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            call()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / number)
    return statistics.median(samples)


def torch_ms(cfg: SubnetConfig, x, n_classes: int, repeat: int, number: int) -> dict[str, float]:
    """PyTorch on the GPU, median ms per call: eager, and replaying one captured CUDA graph.

    Seeded random weights: latency does not depend on them, and the GPU machine then needs no
    checkpoint (the module's numbers are checked against compile's record instead).
    """
    import torch

    from ofa_deploy.search_space import random_subnet

    torch.backends.cudnn.benchmark = True
    model = random_subnet(cfg, 0, n_classes).eval().cuda()
    xt = torch.from_numpy(x).cuda()
    with torch.no_grad():
        side = torch.cuda.Stream()  # warm-up (cuDNN's autotuning) on a side stream, as graph capture asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(20):
                model(xt)
        torch.cuda.current_stream().wait_stream(side)
        eager = gpu_ms(lambda: model(xt), repeat, number)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(xt)
        replayed = gpu_ms(graph.replay, repeat, number)
    return {"eager": eager, "graph": replayed}


def run(bundle: Path, out: Path, repeat: int, number: int) -> None:
    import numpy as np

    from ofa_deploy.device_check import check_compiled

    rows = []
    for name in SUBNETS:
        folders = {v: bundle / f"{name}-{v}" for v in VARIANTS if (bundle / f"{name}-{v}").is_dir()}
        if not folders:
            continue
        row: dict = {"subnet": name}
        for variant, folder in folders.items():
            rec = check_compiled(folder, repeat=repeat, number=number).record
            meta = json.loads((folder / "metadata.json").read_text())
            row.update({"id": rec["subnet_id"], f"tvm_{variant}_ms": rec["latency"]["median_ms"],
                        f"tvm_{variant}_rel_err": rec["verification"]["max_rel_err"],
                        f"tvm_{variant}_status": rec["verification"]["status"], "macs": meta["macs"],
                        "functions": f"{meta['tuning_database']['tuned_functions']}/"
                                     f"{meta['tuning_database']['total_functions']}",
                        "device": rec["device_line"], "n_classes": meta["output"]["shape"][1]})
        x = np.load(next(iter(folders.values())) / "reference.npz")["input"]
        try:
            timed = torch_ms(SUBNETS[name], x, row["n_classes"], repeat, number)
            row.update({f"torch_{k}_ms": v for k, v in timed.items()})
        except Exception as exc:  # noqa: BLE001 - the modules' own results still count; the table shows '-'
            log.error("PyTorch on the GPU failed for %s: %s", name, exc)
        rows.append(row)
        log.info("%s: %s", name, row)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda_on_gpu.json").write_text(json.dumps(rows, indent=2) + "\n")

    def ms(row: dict, key: str) -> str:
        return f"{row[key]:.3f}" if key in row else "-"

    lines = [f"GPU: {rows[0]['device']}; fp32, batch 1, @224; {repeat} samples of {number} calls, medians (ms)",
             "", "| subnet | GMACs | TVM, one CUDA graph | TVM, kernel by kernel | PyTorch eager "
             "| PyTorch, CUDA graph | TVM graph / PyTorch graph | TVM max rel. err | functions tuned |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        both = {"tvm_graph_ms", "torch_graph_ms"} <= set(r)
        ratio = f"{r['tvm_graph_ms'] / r['torch_graph_ms']:.2f}x" if both else "-"
        errs = max(r.get(f"tvm_{v}_rel_err", 0.0) for v in VARIANTS)
        status = "/".join(sorted({r[f"tvm_{v}_status"] for v in VARIANTS if f"tvm_{v}_status" in r}))
        lines.append(f"| {r['subnet']} ({r['id']}) | {r['macs'] / 1e9:.3f} | {ms(r, 'tvm_graph_ms')} | "
                     f"{ms(r, 'tvm_kernels_ms')} | {ms(r, 'torch_eager_ms')} | {ms(r, 'torch_graph_ms')} | {ratio} | "
                     f"{errs:.1e} ({status}) | {r['functions']} |")
    (out / "cuda_on_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="compile the subnets here")
    p.add_argument("--target", default="cuda-sm90")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--subnets", default="max,mid,min", help="comma-separated: max, mid, min")
    r = sub.add_parser("run", help="check and time them on the GPU machine")
    r.add_argument("--bundle", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--repeat", type=int, default=50)
    r.add_argument("--number", type=int, default=20)
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.target, args.out, args.subnets.split(","))
    else:
        run(args.bundle, args.out, args.repeat, args.number)


if __name__ == "__main__":
    main()
