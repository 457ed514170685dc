"""The analytic VTA model: tiling against the buffers, placement, totals, MobileNetV2, the FPGA finding."""

import dataclasses
import sys

import numpy as np
import pytest

from ofa_deploy import SubnetConfig
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.latency import BOARDS, ConvShape, VtaConfig, get_board, latency_model, plan_conv, vta_report
from ofa_deploy.latency.tables import layers_with_acts
from ofa_deploy.latency.vta import HSWISH_ON_ARM, arm_reason, describe_offload, estimate_layer, offload_report, on_vta
from ofa_deploy.search.evolution import EvolutionConfig
from ofa_deploy.search_space.costs import LayerCost, count_costs
from ofa_deploy.search_space.genes import configs_to_genes
from ofa_deploy.targets import get_target, register_target
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))  # the FPGA-vs-CPU research script and its MobileNetV2 are benches
from fpga_vs_cpu import intensity_table, markdown  # noqa: E402
from mobilenetv2 import mobilenet_v2_layers  # noqa: E402

ULTRA96 = get_board("vta-ultra96")


def conv_layer(cin, cout, hw, k=1, stride=1, residual=False):
    ho = (hw + 2 * (k // 2) - k) // stride + 1
    w = cout * cin * k * k
    out = cout * ho * ho
    return LayerCost("c", "conv", (cin, hw, hw), (cout, ho, ho), w * ho * ho, w + 2 * cout, w + cout,
                     cin * hw * hw + (out if residual else 0), out)


def tile_usage(shape, plan):
    th, tw, tco, tci = plan.tile
    k, s = shape.kernel, shape.stride
    return {"inp": ((th - 1) * s + k) * ((tw - 1) * s + k) * tci, "wgt": tco * tci * k * k, "acc": th * tw * tco,
            "uop": tw * tci * k * k}


def test_config_and_boards():
    cap = VtaConfig().capacity()
    assert cap == {"inp": 1024, "wgt": 512, "acc": 1024, "uop": 4096}  # half of each buffer (2 virtual threads)
    assert ULTRA96.peak_gops == pytest.approx(170.496)  # 256 MACs x 2 x 333 MHz
    assert get_board("vta-pynq").peak_gops == pytest.approx(51.2)
    assert sorted(BOARDS) == ["vta-pynq", "vta-ultra96", "vta-zcu104"]


@pytest.mark.parametrize("name", ["vta-ultra96", "vta-zcu104", "vta-pynq"])
def test_board_figures_come_from_the_registry(name):
    spec, board = get_target(name), get_board(name)
    assert (board.fpga_mhz, board.axi_bits) == (spec.vta.clock_mhz, spec.vta.axi_bits)
    assert (board.cpu.peak_gflops, board.dram_gbps) == (spec.peak_gflops_fp32, spec.peak_gbps)
    assert board.cpu_desc == f"{spec.cores}x {spec.host['mcpu']} ({spec.arch})"


def test_registry_override_changes_the_model():
    """One place per number: re-registering a board with a faster fabric speeds up its VTA layers."""
    base = get_target("vta-ultra96")
    layer = conv_layer(64, 128, 28)
    slow = estimate_layer(layer, None, get_board("vta-ultra96")).ms
    try:
        register_target(base.replace(vta=dataclasses.replace(base.vta, clock_mhz=666.0)))
        assert get_board("vta-ultra96").fpga_mhz == 666.0
        assert estimate_layer(layer, None, get_board("vta-ultra96")).ms < slow
    finally:
        from ofa_deploy.targets import builtin

        register_target(builtin.vta_ultra96)
    assert get_board("vta-ultra96").fpga_mhz == 333.0
    with pytest.raises(OfaDeployError, match="unknown VTA board 'cortex-a53'; known: vta-pynq, vta-ultra96"):
        get_board("cortex-a53")


def test_conv_that_fits_moves_each_tensor_once():
    shape = ConvShape.from_layer(conv_layer(32, 64, 8))
    assert (shape.kernel, shape.stride, shape.residual) == (1, 1, False)
    plan = plan_conv(shape, ULTRA96)
    assert plan.n_tiles[:3] == (1, 1, 1)  # one spatial / output-channel tile: nothing is re-read
    assert plan.dram_bytes == plan.compulsory_bytes == 8 * 8 * 32 + 64 * 32 + 8 * 8 * 64
    # exact GEMM count: 64 pixels x 4 out blocks x 2 in blocks, plus one GEMM instruction per tile
    # (the planner may split the reduction in two so the second half loads while the first computes)
    assert plan.gemm_cycles == 64 * 4 * 2 + int(np.prod(plan.n_tiles)) * VtaConfig().gemm_insn_cycles


def test_conv_that_does_not_fit_is_tiled_within_the_buffers():
    cap = VtaConfig().capacity()
    for layer in (conv_layer(960, 1280, 7), conv_layer(16, 96, 112), conv_layer(96, 24, 56, residual=True)):
        shape = ConvShape.from_layer(layer)
        plan = plan_conv(shape, ULTRA96)
        assert np.prod(plan.n_tiles) > 1, layer
        assert all(v <= cap[k] for k, v in tile_usage(shape, plan).items()), plan
        assert plan.dram_bytes >= plan.compulsory_bytes
        ideal = layer.macs / VtaConfig().macs_per_cycle
        assert plan.gemm_cycles >= ideal  # channels are padded up to multiples of 16
    big = plan_conv(ConvShape.from_layer(conv_layer(960, 1280, 7)), ULTRA96)
    assert big.dram_bytes > big.compulsory_bytes  # 1.2 MB of weights vs 128 KiB: something is re-read
    assert big.cycles >= max(big.load_cycles, big.gemm_cycles + big.alu_cycles, big.store_cycles)
    assert big.cycles < big.load_cycles + big.gemm_cycles + big.alu_cycles + big.store_cycles  # overlap
    stride2 = ConvShape.from_layer(conv_layer(24, 48, 56, k=3, stride=2))
    assert (stride2.kernel, stride2.stride, stride2.ho) == (3, 2, 28)


def test_placement_depthwise_se_hswish_on_arm():
    layers = layers_with_acts(SubnetConfig.max())
    report = vta_report(layers, ULTRA96)
    for (layer, act), est in zip(layers, report.layers):
        if layer.op in ("dwconv", "se", "pool", "linear") or layer.name in ("first_conv", "feature_mix_layer"):
            assert est.device == "arm", layer.name
        else:
            assert est.device == "vta" and on_vta(layer), layer.name
    reasons = {layer.op: arm_reason(layer) for layer, _ in layers if not on_vta(layer)}
    assert set(reasons) == {"conv", "dwconv", "se", "pool", "linear"}
    assert "depthwise" in reasons["dwconv"] and "squeeze-excite" in reasons["se"]
    assert arm_reason(layers[0][0]) == "conv with 3 input channels (< BLOCK_IN 16)"  # first_conv
    expand = next(l for l, a in layers if l.name == "blocks.9.expand")  # an h-swish stage
    assert estimate_layer(expand, "h_swish", ULTRA96).ms > estimate_layer(expand, None, ULTRA96).ms
    assert estimate_layer(expand, "relu", ULTRA96).ms == estimate_layer(expand, None, ULTRA96).ms


def test_totals_are_consistent():
    model = latency_model("vta-ultra96", "ofa_mbv3_d234_e346_k357_w1.0")
    assert model.source == "estimated" and model.dtype_bytes == 1
    rng = np.random.default_rng(5)
    cfgs = [SubnetConfig.sample(rng) for _ in range(8)]
    for cfg, ms in zip(cfgs, model.predict(configs_to_genes(cfgs))):
        rep = vta_report(layers_with_acts(cfg), "vta-ultra96")
        costs = count_costs(cfg)
        assert rep.latency_ms == pytest.approx(ms, rel=1e-12) == pytest.approx(sum(l.ms for l in rep.layers))
        assert rep.gops == pytest.approx(2 * costs.macs / (ms * 1e-3) / 1e9)
        assert rep.intensity == pytest.approx(costs.intensity(1))
        assert 0 < rep.vta_time_fraction < 1 and rep.gops < ULTRA96.peak_gops
        assert rep.summary()["source"] == "estimated"
    slow = vta_report(layers_with_acts(cfgs[0]), "vta-pynq").latency_ms
    assert slow > vta_report(layers_with_acts(cfgs[0]), "vta-ultra96").latency_ms


def test_mobilenet_v2_layer_list():
    layers = mobilenet_v2_layers()
    assert sum(l.macs for l, _ in layers) == 300_774_272  # torchvision's 300.8 M
    assert sum(l.params for l, _ in layers) == 3_504_872  # torchvision's parameter count
    assert sum(l.op == "dwconv" for l, _ in layers) == 17
    assert vta_report(layers, "vta-ultra96").latency_ms > 0


def test_fpga_subnet_has_higher_intensity_than_cpu_subnet():
    rows = intensity_table((30.0,), "vta-ultra96", config=EvolutionConfig(population=50, generations=80))
    fpga, cpu, mbv2 = rows
    assert fpga["searched_for"].startswith("fpga") and cpu["searched_for"].startswith("cpu")
    assert fpga["fpga_ms"] <= 30.0 and cpu["cpu_ms"] <= 30.0
    assert fpga["intensity_int8"] > cpu["intensity_int8"]
    assert mbv2["macs_m"] == 300.8 and "| 30.0 |" in markdown(rows)


def test_accelerator_space_fpga_subnet_is_denser_than_mobilenetv2():
    """The paper's second finding holds in the ReLU / no-SE space (see bench/fpga_vs_cpu.py)."""
    rows = intensity_table((30.0,), "vta-ultra96", space="ofa_mbv3_relu_nose_d234_e346_k357_w1.0",
                           config=EvolutionConfig(population=100, generations=200))  # ~1 s; 80 gens is too short
    fpga, cpu, mbv2 = rows
    assert fpga["fpga_ms"] <= 30.0 and cpu["cpu_ms"] <= 30.0
    assert fpga["intensity_int8"] > mbv2["intensity_int8"] > cpu["intensity_int8"]


def test_offload_report_partitions_count_costs_layers():
    cfg = SubnetConfig.max()
    names = [layer.name for layer in count_costs(cfg).layers]
    rep = offload_report(layers_with_acts(cfg), "vta-zcu104")
    assert [row["name"] for row in rep["layers"]] == names
    assert sorted(rep["offloadable"] + rep["not_offloadable"]) == sorted(names)
    assert not set(rep["offloadable"]) & set(rep["not_offloadable"])
    assert sum(rep["not_offloadable_by_reason"].values()) == len(rep["not_offloadable"])
    n_dw = sum(layer.op == "dwconv" for layer in count_costs(cfg).layers)  # 20 block slots + block 0
    assert n_dw == 21 and rep["not_offloadable_by_reason"][arm_reason(count_costs(cfg).layers[1])] == n_dw
    hswish = [r["name"] for r in rep["layers"] if r["activation"] == "h_swish" and r["vta_model"] == "vta"]
    assert rep["activation_on_arm"] == hswish and hswish
    assert all(r["activation_on_arm"] == HSWISH_ON_ARM for r in rep["layers"] if r["name"] in hswish)
    est = rep["estimate"]
    assert est["source"] == "estimated" and est["target"] == "vta-zcu104"
    assert est["latency_ms"] == pytest.approx(vta_report(layers_with_acts(cfg), "vta-zcu104").latency_ms, abs=1e-4)
    assert sum(r["estimated_ms"] for r in rep["layers"]) == pytest.approx(est["latency_ms"], rel=1e-3)
    assert "TVM 0.27 has no VTA backend (removed in apache/tvm PR 17542)" in rep["note"]
    lines = describe_offload(rep)
    assert lines[0].startswith("note: TVM 0.27 has no VTA backend")
    assert f"{len(rep['offloadable'])} of {len(names)} layers offloadable" in lines[1]
    assert "(estimated)" in lines[2] and len(lines) == 4 + len(names)
