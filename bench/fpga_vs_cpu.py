"""FPGA vs CPU vs MobileNetV2: arithmetic intensity of the subnets search picks under one budget.

The paper's qualitative finding, reproduced with our models: under the same latency budget, the
subnet found for the FPGA (VTA; 1x1 convs are cheap, depthwise layers fall back to slow ARM cores)
has a higher arithmetic intensity than the one found for a CPU, and than MobileNetV2. The CPU is
the same board's ARM cores running the whole network (fp32 roofline), so the comparison is "this
board with vs without its FPGA". Accuracy comes from the synthetic proxy (``ofa_deploy.search.proxy``) unless a
predictor is given: the table is about the cost models, not about real accuracy.

In the MobileNetV3 space the FPGA subnet beats the CPU one but not MobileNetV2: SE blocks and
h-swish run on the ARM cores, and SE moves 3 bytes per activation for almost no ops. The OFA
paper's FPGA results came from a toolchain (Xilinx's DPU) that could not run MobileNetV3 either;
``--space ofa_mbv3_relu_nose_d234_e346_k357_w1.0`` searches the same macro-architecture with
ReLU and no SE, where the FPGA subnet is denser than both.

Run: ``python bench/fpga_vs_cpu.py --board vta-ultra96 --budgets 15,25,40 [--space NAME]``
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from ofa_deploy.latency.base import TableLatencyModel
from ofa_deploy.latency.roofline import CPU_EFFICIENCY, roofline_layer_ms
from ofa_deploy.latency.tables import layers_with_acts
from ofa_deploy.latency.vta import get_board, vta_layer_ms, vta_report
from ofa_deploy.search import AccuracyModel, Constraints, Evaluator, EvolutionConfig, ProxyAccuracy, evolution_search
from ofa_deploy.search_space import DEFAULT_SPACE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mobilenetv2 import mobilenet_v2_layers  # noqa: E402

log = logging.getLogger(__name__)


def board_models(board_name: str, space: str = DEFAULT_SPACE) -> tuple[TableLatencyModel, TableLatencyModel]:
    """(FPGA model, CPU-only model) of one board."""
    board = get_board(board_name)
    fpga = TableLatencyModel(space, vta_layer_ms(board), target=board.name, dtype_bytes=1)
    cpu = TableLatencyModel(space, lambda layer, act: roofline_layer_ms(layer, board.cpu, CPU_EFFICIENCY, 4),
                            target=f"{board.cpu.name} (cpu only)", dtype_bytes=4)
    return fpga, cpu


def _cpu_ms(layers: list, board_name: str) -> float:
    hw = get_board(board_name).cpu
    return sum(roofline_layer_ms(layer, hw, CPU_EFFICIENCY, 4) for layer, _ in layers)


def intensity_table(budgets_ms: tuple[float, ...] = (15.0, 25.0, 40.0), board: str = "vta-ultra96", *,
                    accuracy: AccuracyModel | None = None, space: str = DEFAULT_SPACE, seed: int = 0,
                    config: EvolutionConfig | None = None) -> list[dict[str, Any]]:
    """One row per (budget, searched-for) plus MobileNetV2; intensities in ops per int8 byte."""
    accuracy = accuracy or ProxyAccuracy(space)
    config = config or EvolutionConfig(seed=seed)
    fpga, cpu = board_models(board, space)
    mbv2 = mobilenet_v2_layers()
    mbv2_macs = sum(layer.macs for layer, _ in mbv2)
    mbv2_int8 = 2 * mbv2_macs / sum(layer.bytes(1) for layer, _ in mbv2)
    mbv2_fpga, mbv2_cpu = vta_report(mbv2, board).latency_ms, _cpu_ms(mbv2, board)
    rows: list[dict[str, Any]] = []
    for budget in budgets_ms:
        for name, model in (("fpga", fpga), ("cpu", cpu)):
            t0 = time.perf_counter()
            res = evolution_search(Evaluator(space, accuracy, model, Constraints(latency_ms=budget)), config)
            cfg = res.best_config
            layers = layers_with_acts(cfg)
            costs_int8 = 2 * int(res.best.macs[0]) / sum(layer.bytes(1) for layer, _ in layers)
            rows.append({
                "budget_ms": budget, "searched_for": f"{name} ({model.target})", "subnet": cfg.id,
                "image_size": cfg.image_size, "macs_m": round(int(res.best.macs[0]) / 1e6, 1),
                "proxy_acc": round(float(res.best.acc[0]), 4),
                "intensity_int8": round(costs_int8, 2),
                "fpga_ms": round(vta_report(layers, board).latency_ms, 2), "cpu_ms": round(_cpu_ms(layers, board), 2),
                "search_s": round(time.perf_counter() - t0, 2),
            })
        rows.append({
            "budget_ms": budget, "searched_for": "MobileNetV2-1.0 @224 (fixed)", "subnet": "mobilenet_v2",
            "image_size": 224, "macs_m": round(mbv2_macs / 1e6, 1), "proxy_acc": None,
            "intensity_int8": round(mbv2_int8, 2), "fpga_ms": round(mbv2_fpga, 2), "cpu_ms": round(mbv2_cpu, 2),
            "search_s": 0.0,
        })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ["budget ms", "searched for", "subnet", "MMACs", "proxy acc", "intensity ops/B (int8)",
            "FPGA ms", "CPU ms"]
    keys = ["budget_ms", "searched_for", "subnet", "macs_m", "proxy_acc", "intensity_int8", "fpga_ms", "cpu_ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r[k] is None else str(r[k]) for k in keys) + " |")
    return "\n".join(lines)


@click.command()
@click.option("--board", default="vta-ultra96", show_default=True, help="vta-ultra96 | vta-zcu104 | vta-pynq")
@click.option("--budgets", default="15,25,40", show_default=True, help="Latency budgets in ms, comma-separated.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--generations", default=500, show_default=True, type=int)
@click.option("--space", default=DEFAULT_SPACE, show_default=True, help="Search space searched for both devices.")
def main(board: str, budgets: str, seed: int, generations: int, space: str) -> None:
    """Print the FPGA / CPU / MobileNetV2 intensity table (markdown).

    \b
    Example:
      python bench/fpga_vs_cpu.py --board vta-ultra96 --budgets 15,25,40
    """
    logging.basicConfig(level=logging.WARNING)
    rows = intensity_table(tuple(float(b) for b in budgets.split(",")), board, space=space,
                           config=EvolutionConfig(seed=seed, generations=generations))
    click.echo(markdown(rows))


if __name__ == "__main__":
    main()
