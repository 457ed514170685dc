"""The ARM latency estimate against published measured MobileNetV3-Large figures.

There is no ARM board here, so ARM latencies are *estimated*: the roofline with efficiencies
learned on the profiled x86 host (``tuning_logs/<target>/estimated_model.json``, written by
``ofa-deploy profile --target cortex-a76 --estimate-from x86-host``; see
``ofa_deploy/latency/learned.py``). This script checks that estimate against published,
citable measurements of MobileNetV3-Large (fp32, batch 1) on ARM cores in or near our registry,
and writes the table to BENCHMARKS.md.

MobileNetV3-Large is not exactly in the OFA space (three of its blocks expand by 2.5 / 2.3 / 2.3,
OFA allows 3, 4, 6). The nearest OFA subnet, at 224 px, with depths [2, 3, 4, 2, 3] (the same
block count and widths 24/40/80/112/160, the same stem and head), keeps every kernel size and
expand ratio and rounds 2.5 / 2.3 / 2.3 up to 3: ks = 3,3 | 5,5,5 | 3,3,3,3 | 3,3 | 5,5,5 and
e = 4,3 | 3,3,3 | 6,3,3,3 | 6,6 | 6,6,6. Our cost counter gives it 221.6 M MACs (the paper: 219 M).

    ofa-deploy profile --target cortex-a76 --estimate-from x86-host     # first: the estimated model
    python bench/arm_estimate_check.py                                  # prints and updates BENCHMARKS.md
    python bench/arm_estimate_check.py --estimated-model PATH --no-write
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.latency.learned import efficiency_from_dict
from ofa_deploy.latency.roofline import CPU_EFFICIENCY, Hardware, RooflineEfficiency, roofline_layer_ms
from ofa_deploy.search_space import SubnetConfig
from ofa_deploy.search_space.costs import count_costs
from ofa_deploy.tuning_logs.layout import ESTIMATE_FILE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, update_benchmarks_md  # noqa: E402

log = logging.getLogger("arm_estimate_check")
SECTION = "ARM latency estimate vs published MobileNetV3-Large figures"
MBV3_LARGE_MACS = 219e6  # Howard et al. 2019, Table 3
NCNN_VARIANT_MACS = 245.6e6  # ncnn's benchmark/mobilenet_v3.param, counted layer by layer (convs + FCs) at 224 px
# Nearest OFA subnet (see the module docstring); slots beyond a stage's depth are ignored but valid.
MBV3_LARGE_OFA = {"ks": [3, 3, 3, 3, 5, 5, 5, 5, 3, 3, 3, 3, 3, 3, 3, 3, 5, 5, 5, 5],
                  "e": [4, 3, 3, 3, 3, 3, 3, 3, 6, 3, 3, 3, 6, 6, 6, 6, 6, 6, 6, 6],
                  "d": [2, 3, 4, 2, 3], "image_size": 224}


@dataclass(frozen=True)
class Published:
    """One published measurement and the hardware we model it with."""

    device: str
    published_ms: float
    conditions: str  # framework, threads, precision
    citation: str  # where the figure is printed
    hardware: Hardware  # what the roofline is evaluated on
    hardware_note: str  # how that hardware was derived (registry entry, or a variant of one)
    model_note: str  # how the measured network differs from MobileNetV3-Large, if it does


PUBLISHED = (
    Published(
        device="Google Pixel 3, one big core",
        published_ms=44.0,
        conditions="TFLite, fp32, 1 thread on one large core",
        citation=("tensorflow/models research/slim/nets/mobilenet/README.md, table 'Mobilenet V3 Imagenet "
                  "Checkpoints', row 'Large dm=1 (float)': Pixel 1 51.2 / Pixel 2 61 / Pixel 3 44 ms "
                  "(https://github.com/tensorflow/models/blob/master/research/slim/nets/mobilenet/README.md); "
                  "the same figures in Howard et al., Searching for MobileNetV3, ICCV 2019, Table 3 "
                  "(https://arxiv.org/abs/1905.02244)"),
        hardware=Hardware("pixel3-big-core", "cpu", 1 * 2.5 * 16, 29.9),
        hardware_note=("one-core variant of the cortex-a76 entry: Snapdragon 845 Kryo 385 Gold (Cortex-A75 "
                       "derived, 2x128-bit FMA = 16 FLOP/cycle like the A76) at 2.5 GHz = 40 GFLOP/s; "
                       "LPDDR4X-3733 x 64 bit = 29.9 GB/s"),
        model_note="MobileNetV3-Large itself (219 M MACs)",
    ),
    Published(
        device="Raspberry Pi 4 B (BCM2711B0), 4x Cortex-A72 @ 1.5 GHz",
        published_ms=56.34,
        conditions="ncnn benchncnn, fp32, 4 threads, avg of 8 loops",
        citation=("Tencent/ncnn issue #3485 'New RPi benchmarks' (Qengineering), 'Raspberry Pi 4 Model B "
                  "Broadcom BCM2711B0, Cortex-A72 (ARMv8) (1.5GHz x 4)', num_threads = 4: mobilenet_v3 "
                  "avg = 56.34 ms (https://github.com/Tencent/ncnn/issues/3485)"),
        hardware=Hardware("cortex-a72@1.5GHz", "cpu", 4 * 1.5 * 8, 12.8),
        hardware_note="the cortex-a72 entry at the 1.5 GHz of pre-2021 boards: 48.0 GFLOP/s, 12.8 GB/s",
        model_note=("ncnn's benchmark/mobilenet_v3.param: a MobileNetV3-Large variant (same stem, widths, "
                    "head) whose 160-channel stage starts with a stride-1 672-expand block at 14x14 and "
                    "has one 960 block fewer: 245.6 M MACs by our count of the param file (convolutions and FCs)"),
    ),
    Published(
        device="Raspberry Pi 3 B+ (BCM2837B0), 4x Cortex-A53 @ 1.4 GHz",
        published_ms=92.66,
        conditions="ncnn benchncnn, fp32, 4 threads, avg of 8 loops",
        citation=("Tencent/ncnn issue #3451 'raspberry pi 3b+ benchmark' (nihui, 2021-12-26), "
                  "./benchncnn 8 4 0 -1 1: mobilenet_v3 avg = 92.66 ms "
                  "(https://github.com/Tencent/ncnn/issues/3451)"),
        hardware=Hardware("cortex-a53", "cpu", 22.4, 4.0),
        hardware_note="the cortex-a53 entry as is (Pi 3 B+): 22.4 GFLOP/s, 4.0 GB/s",
        model_note="the ncnn MobileNetV3-Large variant above (245.6 M MACs)",
    ),
)


def estimate_ms(cfg: SubnetConfig, hw: Hardware, eff: RooflineEfficiency) -> float:
    """Our roofline estimate of ``cfg`` on ``hw``: the same sum of fused layers search uses."""
    return sum(roofline_layer_ms(layer, hw, eff) for layer in count_costs(cfg).layers)


def load_efficiency(path: Path) -> tuple[RooflineEfficiency, dict]:
    try:
        data = json.loads(path.read_text())
        return efficiency_from_dict(data), data
    except FileNotFoundError:
        raise OfaDeployError(f"{path}: no estimated model; run 'ofa-deploy profile --target cortex-a76 "
                             "--estimate-from x86-host' first (or pass --estimated-model PATH)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OfaDeployError(f"{path}: not a readable estimated model ({err})") from None


def rows_for(cfg: SubnetConfig, eff: RooflineEfficiency) -> list[dict]:
    rows = []
    for p in PUBLISHED:
        learned, guessed = estimate_ms(cfg, p.hardware, eff), estimate_ms(cfg, p.hardware, CPU_EFFICIENCY)
        rows.append({"published": p, "learned_ms": learned, "guessed_ms": guessed,
                     "learned_err_pct": (learned - p.published_ms) / p.published_ms * 100,
                     "guessed_err_pct": (guessed - p.published_ms) / p.published_ms * 100})
    return rows


def report(cfg: SubnetConfig, eff: RooflineEfficiency, data: dict, path: Path, rows: list[dict],
           pi5_ms: float) -> str:
    src, fit = data["learned_from"], data["fit"]
    tvm = src.get("tvm_target") or {}
    macs = count_costs(cfg).macs
    lines = [
        "Command: `ofa-deploy profile --target cortex-a76 --estimate-from x86-host && "
        "python bench/arm_estimate_check.py`",
        "",
        f"Efficiencies from `{path.relative_to(REPO) if path.is_relative_to(REPO) else path}` (created "
        f"{data.get('created')}): learned on {src['target']} {src['tables']} tables (db "
        f"{(src.get('database_sha256') or 'none')[:8]}, TVM {src.get('tvm_version')}), fit rms "
        f"{fit['rms_pct']:.1f} % / max {fit['max_pct']:.1f} % over {fit['n_workloads']} workloads; "
        + ", ".join(f"{k} {getattr(eff, k):.3g}" for k in ("conv", "dwconv", "se", "pool", "linear", "mem"))
        + f", overhead {eff.overhead_us:.1f} us/layer"
        + (f" (weakly determined: {', '.join(fit['weakly_determined'])})" if fit.get("weakly_determined") else "")
        + ".",
        "",
        f"Network: nearest OFA subnet to MobileNetV3-Large at 224 px ({cfg.id}, {macs / 1e6:.1f} M MACs by our "
        f"counter vs {MBV3_LARGE_MACS / 1e6:.0f} M): d = 2,3,4,2,3; ks = 3,3 | 5,5,5 | 3,3,3,3 | 3,3 | 5,5,5; "
        "e = 4,3 | 3,3,3 | 6,3,3,3 | 6,6 | 6,6,6 (MobileNetV3-Large's 2.5/2.3/2.3 expands rounded up to 3).",
        "",
        "| device (published) | conditions | published ms | our estimate ms (learned) | error | "
        "named-guess estimate ms | error | hardware modelled |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        p = r["published"]
        lines.append(f"| {p.device} | {p.conditions} | {p.published_ms:.1f} | {r['learned_ms']:.1f} | "
                     f"{r['learned_err_pct']:+.0f} % | {r['guessed_ms']:.1f} | {r['guessed_err_pct']:+.0f} % | "
                     f"{p.hardware_note} |")
    lines += [
        "",
        f"For reference, the same estimate on the cortex-a76 entry itself (Raspberry Pi 5, 4 cores, no published "
        f"fp32 MobileNetV3-Large figure found to compare with): {pi5_ms:.1f} ms.",
        "",
        "Sources:",
        *[f"- {r['published'].device}: {r['published'].citation}. Network: {r['published'].model_note}." for r in rows],
        "",
        "Caveats: the published figures are hand-optimised libraries (TFLite's fp32 kernels; ncnn's NEON "
        "assembly), while the estimate models TVM-tuned code, with efficiencies (fractions of peak) learned on "
        f"{src['target']} ({tvm.get('kind')} -mcpu={tvm.get('mcpu')}, {tvm.get('num-cores')} cores) and assumed to "
        "carry over to NEON cores, thread counts and caches; the two "
        f"ncnn rows measure a variant with {(NCNN_VARIANT_MACS / macs - 1) * 100:.0f} % more MACs than the subnet "
        "estimated; the Pixel 3 core is an "
        "A75 derivative, modelled as a one-core A76 at its clock. The error column says how far the "
        "estimate is from a real device, not how good TVM's code is. All estimates are labelled `estimated`.",
    ]
    return "\n".join(lines)


@click.command()
@click.option("--estimated-model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"An estimated model file (default: tuning_logs/cortex-a76/{ESTIMATE_FILE}).")
@click.option("--write/--no-write", default=True, show_default=True, help="Update BENCHMARKS.md.")
def main(estimated_model: Path | None, write: bool) -> None:
    """Compare our estimate for MobileNetV3-Large with published measured figures."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.layout import tuning_logs_dir

    path = estimated_model or tuning_logs_dir() / "cortex-a76" / ESTIMATE_FILE
    try:
        eff, data = load_efficiency(path)
    except OfaDeployError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    cfg = SubnetConfig.from_dict(MBV3_LARGE_OFA)
    a76 = get_target("cortex-a76")
    pi5_ms = estimate_ms(cfg, Hardware(a76.name, a76.kind, a76.peak_gflops_fp32, a76.peak_gbps), eff)
    rows = rows_for(cfg, eff)
    body = report(cfg, eff, data, path.resolve(), rows, pi5_ms)
    click.echo(body)
    if write:
        update_benchmarks_md(SECTION, body)
        log.info("updated BENCHMARKS.md section %r", SECTION)


if __name__ == "__main__":
    main()
