"""Evolution and NSGA-II: constraints, reproducibility, improvement, bounded infeasibility, outputs."""

import csv
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from ofa_deploy import SubnetConfig
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.outputs import MANIFEST
from ofa_deploy.latency import CPU_EFFICIENCY, TableLatencyModel, hardware_from_spec, latency_model, roofline_layer_ms
from ofa_deploy.latency.roofline import Hardware, spec_to_hardware
from ofa_deploy.latency.tables import cost_tables
from ofa_deploy.search import (Constraints, Evaluator, EvolutionConfig, NsgaConfig, ProxyAccuracy, evolution_search,
                               nsga_search, run_search, verify_search, verify_top, write_outputs)
from ofa_deploy.search_space.costs import count_costs
from ofa_deploy.search_space.genes import configs_to_genes, genes_to_config

SPACE = "ofa_mbv3_d234_e346_k357_w1.0"
FAKE_CPU = SimpleNamespace(name="fake-a76", kind="cpu", arch="aarch64", cores=4, peak_gflops_fp32=150.0,
                           peak_gbps=17.0, tvm_target={"kind": "llvm"})
SMALL = dict(population=40, generations=60)


@pytest.fixture(scope="module")
def vta():
    return latency_model("vta-ultra96", SPACE)


@pytest.fixture(scope="module")
def cpu():
    return latency_model(FAKE_CPU, SPACE)


def evaluator(latency, **constraints):
    return Evaluator(SPACE, ProxyAccuracy(SPACE), latency, Constraints(**constraints))


def test_roofline_adapter_with_fake_spec(cpu):
    hw = spec_to_hardware(FAKE_CPU)
    assert hw == Hardware("fake-a76", "cpu", 150.0, 17.0)
    assert cpu.source == "estimated" and cpu.dtype_bytes == 4
    rng = np.random.default_rng(3)
    cfgs = [SubnetConfig.sample(rng) for _ in range(10)]
    direct = [sum(roofline_layer_ms(l, hw) for l in count_costs(c).layers) for c in cfgs]
    assert np.allclose(cpu.predict(configs_to_genes(cfgs)), direct, rtol=1e-12)
    layer = count_costs(SubnetConfig.max()).layers[4]  # a depthwise conv
    t_compute = 2 * layer.macs / (150e9 * CPU_EFFICIENCY.dwconv)
    t_memory = layer.bytes(4) / (17e9 * CPU_EFFICIENCY.mem)
    assert roofline_layer_ms(layer, hw) == pytest.approx(1e3 * max(t_compute, t_memory) + 5e-3)
    with pytest.raises(OfaDeployError, match="unknown kind 'tpu'"):
        hardware_from_spec("x", "tpu", 1.0, 1.0)
    with pytest.raises(OfaDeployError, match="no peak"):
        hardware_from_spec("x", "cpu", None, 10.0)
    with pytest.raises(OfaDeployError, match="unknown VTA board"):
        latency_model(SimpleNamespace(name="vta-foo", kind="vta"), SPACE)


def test_evolution_respects_constraints_and_is_reproducible(vta):
    cons = dict(latency_ms=20.0, max_macs=150e6, max_params=5.5e6, min_intensity=18.0)
    a = evolution_search(evaluator(vta, **cons), EvolutionConfig(seed=1, **SMALL))
    b = evolution_search(evaluator(vta, **cons), EvolutionConfig(seed=1, **SMALL))
    c = evolution_search(evaluator(vta, **cons), EvolutionConfig(seed=2, **SMALL))
    assert (a.best.genes == b.best.genes).all() and a.history == b.history
    assert not (a.best.genes == c.best.genes).all()
    for s in (a.best, a.front, a.candidates):
        assert (s.latency <= 20.0).all() and (s.macs <= 150e6).all() and (s.params <= 5.5e6).all()
        assert (s.intensity >= 18.0).all()
    assert a.evaluations == 40 + 60 * 40
    assert np.all(np.diff(a.history) >= 0)  # elitist: the best never gets worse
    # the reported numbers are the real ones for the chosen config
    cfg = a.best_config
    assert count_costs(cfg).macs == a.best.macs[0]
    assert vta.predict(configs_to_genes([cfg]))[0] == pytest.approx(a.best.latency[0])


def test_evolution_beats_random_sampling(cpu):
    ev = evaluator(cpu, latency_ms=8.0)
    res = evolution_search(ev, EvolutionConfig(population=50, generations=40, seed=0))
    ev_random = evaluator(cpu, latency_ms=8.0)
    random_pool = ev_random.sample_feasible(np.random.default_rng(0), res.evaluations)
    best_random = ProxyAccuracy(SPACE).predict(random_pool).max()
    assert res.best.acc[0] > best_random + 0.002, (res.best.acc[0], best_random)  # ~+5 % MACs


def test_infeasible_budget_names_the_fastest_subnet(vta):
    fastest, row = vta.fastest()
    assert fastest == pytest.approx(vta.predict(configs_to_genes([SubnetConfig.min()]))[0])  # the min subnet @128
    with pytest.raises(OfaDeployError, match=rf"budget 5 ms is infeasible on vta-ultra96: the fastest subnet takes "
                                             rf"{fastest:.3f} ms \(estimated; r128-d22222"):
        evolution_search(evaluator(vta, latency_ms=5.0), EvolutionConfig(**SMALL))
    with pytest.raises(OfaDeployError, match="max_macs 1e\\+07 is infeasible: the smallest subnet has 41476224 MACs"):
        evolution_search(evaluator(vta, max_macs=1e7), EvolutionConfig(**SMALL))
    with pytest.raises(OfaDeployError, match="highest intensity seen"):
        evolution_search(evaluator(vta, min_intensity=500.0), EvolutionConfig(**SMALL))
    with pytest.raises(OfaDeployError, match="must be positive"):
        evaluator(vta, latency_ms=-1.0)


def test_tight_budget_is_bounded_not_a_hang(vta):
    fastest, _ = vta.fastest()
    res = evolution_search(evaluator(vta, latency_ms=fastest * 1.03), EvolutionConfig(**SMALL))
    assert (res.front.latency <= fastest * 1.03).all() and res.best.latency[0] >= fastest


def test_nsga2_front_is_non_dominated_and_feasible(vta):
    res = nsga_search(evaluator(vta, latency_ms=25.0), NsgaConfig(population=40, generations=40, seed=3))
    again = nsga_search(evaluator(vta, latency_ms=25.0), NsgaConfig(population=40, generations=40, seed=3))
    f = np.column_stack([-res.front.acc, res.front.latency, -res.front.intensity])
    for i in range(len(f)):
        dominated = np.all(f <= f[i], axis=1) & np.any(f < f[i], axis=1)
        assert not dominated.any(), i
    assert (res.front.latency <= 25.0).all() and len(res.front) >= 5
    assert res.best.acc[0] == res.front.acc.max() and res.objective == "pareto"
    assert (res.front.genes == again.front.genes).all()


def test_predictor_for_another_space_is_rejected(vta):
    with pytest.raises(OfaDeployError, match="predictor is for space 'ofa_mbv3_d234_e346_k357_w1.2'"):
        Evaluator(SPACE, ProxyAccuracy("ofa_mbv3_d234_e346_k357_w1.2"), vta)
    with pytest.raises(OfaDeployError, match="objective: unknown 'speed'"):
        run_search("vta-ultra96", ProxyAccuracy(SPACE), objective="speed")


def _device(model, slowdown, seen=None):
    """A device that runs every subnet ``slowdown`` times the model's estimate (what verification measures)."""
    def measure(cfg):
        if seen is not None:
            seen.append(cfg.id)
        return slowdown * float(model.predict(configs_to_genes([cfg]))[0]), "measured"
    return measure


def _search(model_used):
    return evolution_search(evaluator(model_used, latency_ms=25.0), EvolutionConfig(**SMALL, top_k=10))


def test_verification_searches_again_on_the_scaled_model_when_the_device_is_slower(vta):
    """Another device's tables 3x too fast here: round 1 measures 3 over-budget picks, round 2 searches on the
    model x 3 and finds subnets that meet the budget when measured; nothing is measured twice."""
    seen = []
    res = verify_search(_search, vta, 3, _device(vta, 3.0, seen), 25.0)
    rounds = [v["round"] for v in res.verified]
    assert rounds[:3] == [1, 1, 1] and 2 in rounds and len(seen) == len(set(seen)) == len(res.verified)
    assert all(v["latency_ms"] > 25.0 for v in res.verified if v["round"] == 1)
    assert res.latency_source == "measured" and res.best.latency[0] <= 25.0
    assert res.best.latency[0] == pytest.approx(3.0 * vta.predict(res.best.genes)[0])
    assert "x 3.00: the median measured/modelled ratio of 3 subnets measured here" in res.latency_basis
    # the answer is the most accurate measured subnet within budget, from any round
    fits = [v for v in res.verified if v["latency_ms"] <= 25.0]
    assert res.row(res.best, 0)["id"] == max(fits, key=lambda v: v["predicted_accuracy"])["id"]


def test_verification_does_not_search_again_when_the_model_holds(vta):
    """Measured 5 % faster than modelled and within budget: one round, the front keeps the model's estimates."""
    seen = []
    res = verify_search(_search, vta, 3, _device(vta, 0.95, seen), 25.0)
    assert len(seen) == 3 and {v["round"] for v in res.verified} == {1}
    assert res.latency_basis == vta.basis  # the front's estimates are the model's own


def test_verification_searches_again_when_nothing_fits_even_if_the_model_is_close(vta):
    """5 % slower than modelled puts the top picks (at the budget's edge) over it: a second round finds ones that fit."""
    res = verify_search(_search, vta, 3, _device(vta, 1.05), 25.0)
    assert max(v["round"] for v in res.verified) == 2 and res.best.latency[0] <= 25.0


def test_verification_says_how_far_off_the_model_is_when_nothing_fits(vta):
    fastest = 1000.0 * vta.fastest()[0]
    with pytest.raises(OfaDeployError, match=r"none of the \d+ subnets measured meets the 25 ms budget .* ran 1000.00x "
                                             r"the latency model's estimates \(analytic VTA model \(vta-ultra96\)\); the "
                                             rf"fastest subnet of the space would take about {re.escape(f'{fastest:.3g}')} ms here"):
        verify_search(_search, vta, 3, _device(vta, 1000.0), 25.0)

def test_verify_hook_and_outputs(vta, tmp_path):
    res = run_search("vta-ultra96", ProxyAccuracy(SPACE), constraints=Constraints(latency_ms=25.0), **SMALL)
    seen = []

    def measure(cfg):  # pretend the top subnet runs slower than modelled on the device
        seen.append(cfg.id)
        return (30.0 if len(seen) == 1 else 20.0), "measured"

    top2 = res.candidates.take(slice(0, 2))
    res = verify_top(res, 3, measure, 25.0)
    assert len(seen) == 3 and res.latency_source == "measured"
    assert res.best.latency[0] == 20.0 and res.best_config.id == genes_to_config(top2.genes[1], SPACE).id
    assert [v["latency_ms"] for v in res.verified] == [30.0, 20.0, 20.0]
    with pytest.raises(OfaDeployError, match="none of the top 2 subnets meets the 25 ms budget"):
        verify_top(res, 2, lambda cfg: (99.0, "measured"), 25.0)
    with pytest.raises(OfaDeployError, match="got a 'emulated' latency, not a measured one"):
        verify_top(res, 2, lambda cfg: (10.0, "emulated"), 25.0)  # qemu timings never re-rank

    paths = write_outputs(res, tmp_path / "out", target="vta-ultra96")
    data = json.loads(paths["subnet"].read_text())
    assert SubnetConfig.from_json(paths["subnet"]) == res.best_config  # the OFA arch dict, loadable
    assert data["target"] == "vta-ultra96" and data["latency_source"] == "measured"
    assert data["latency_ms"] == 20.0 and data["macs"] == int(res.best.macs[0]) and data["gops"] > 0
    assert data["search"]["population"] == 40 and data["search"]["constraints"] == {"latency_ms": 25.0}
    assert data["search"]["mutate_prob"] == 0.1 and data["verified"][0]["latency_source"] == "measured"
    rows = list(csv.DictReader(paths["front"].open()))
    assert len(rows) == len(res.front) and rows[0]["latency_source"] == "measured"
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST, "front.csv", "pareto.png", "subnet.json"]


def test_table_model_protocol_for_a_future_learned_model():
    class Learned:  # what a tuned latency model will look like to search
        source, target, dtype_bytes = "emulated", "fake", 4

        def predict(self, genes):
            return count_costs_ms(genes)

    def count_costs_ms(genes):
        return cost_tables(SPACE).evaluate(genes)["macs"] / 1e7

    res = evolution_search(Evaluator(SPACE, ProxyAccuracy(SPACE), Learned(), Constraints(latency_ms=20.0)),
                           EvolutionConfig(population=8, generations=3))
    assert res.latency_source == "emulated" and (res.front.latency <= 20.0).all()
    with pytest.raises(OfaDeployError, match=r"fastest subnet takes 4\.\d+ ms"):
        Evaluator(SPACE, ProxyAccuracy(SPACE), Learned(), Constraints(latency_ms=1.0)).check_satisfiable()
    assert isinstance(TableLatencyModel(SPACE, lambda l, a: 1.0, target="t"), TableLatencyModel)
