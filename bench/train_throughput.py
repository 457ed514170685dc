"""Training throughput of the supernet: images/s per subnet size, NCHW vs channels_last, same run.

One training step here is what the trainer does for one sampled subnet: forward, cross-entropy,
backward and an SGD step on the elastic supernet with that subnet active. Each memory format has
its own copy of the network and optimizer; the two are timed in alternation (ABAB...) so a slow
spell of the machine hits both, and the median step is kept. The ratio is what ``TrainConfig.channels_last`` buys on this machine.

    python bench/train_throughput.py --resolutions 128,160 --steps 6
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ofa_deploy.search_space import DEFAULT_SPACE, OFAMobileNetV3, SubnetConfig, get_space
from ofa_deploy.torch_device import resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import UNIFORM_SUBNETS, publish  # noqa: E402

log = logging.getLogger("train_throughput")
FORMATS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def step_seconds(net: OFAMobileNetV3, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer) -> float:
    """Wall time of one training step (synchronised on a GPU)."""
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", default="128,160")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="Timed steps per subnet, format and resolution.")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    base = OFAMobileNetV3(get_space(DEFAULT_SPACE), n_classes=10).train()
    # One network and optimizer per format, converted once: converting one network back and forth
    # between steps would leave its optimizer state in the other layout and time that mix instead.
    nets = {f: copy.deepcopy(base).to(device, memory_format=mf) for f, mf in FORMATS.items()}
    opts = {f: torch.optim.SGD(n.parameters(), lr=1e-3, momentum=0.9) for f, n in nets.items()}
    gen = torch.Generator().manual_seed(args.seed)

    lines = ["| subnet | resolution | NCHW img/s | channels_last img/s | channels_last / NCHW |", "|---|---|---|---|---|"]
    for name, (k, e, d) in UNIFORM_SUBNETS.items():
        for res in (int(r) for r in args.resolutions.split(",")):
            for net in nets.values():
                net.set_active_subnet(SubnetConfig.uniform(k, e, d, res, DEFAULT_SPACE))
            x = torch.randn(args.batch_size, 3, res, res, generator=gen).to(device)
            xs = {f: x.contiguous(memory_format=mf) for f, mf in FORMATS.items()}
            y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
            times: dict[str, list[float]] = {f: [] for f in FORMATS}
            for i in range(args.steps + 1):  # the first round warms both formats up and is dropped
                for fmt in FORMATS:
                    t = step_seconds(nets[fmt], xs[fmt], y, opts[fmt])
                    if i > 0:
                        times[fmt].append(t)
            ips = {f: args.batch_size / statistics.median(ts) for f, ts in times.items()}
            log.info("%s @%d: %s", name, res, ", ".join(f"{f} {v:.1f} img/s" for f, v in ips.items()))
            lines.append(f"| {name} | {res} | {ips['NCHW']:.1f} | {ips['channels_last']:.1f} | "
                         f"{ips['channels_last'] / ips['NCHW']:.2f}x |")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    publish("Training step throughput: NCHW vs channels_last", [
        f"One training step (forward, loss, backward, SGD) of the elastic supernet with the subnet active, "
        f"batch {args.batch_size}, median of {args.steps} steps per cell, each format on its own copy of the "
        f"network, the two timed in alternation; {where}, torch {torch.__version__}.",
        "\n".join(lines)], write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
