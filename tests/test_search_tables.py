"""Gene arrays, OFA arch encoding, and the table fast path against count_costs (exact)."""

import numpy as np
import pytest

from ofa_deploy import SubnetConfig
from ofa_deploy.latency.tables import argmin_additive, cost_tables, layers_with_acts, lookup
from ofa_deploy.search.encoding import encode, encode_configs, n_features
from ofa_deploy.search_space.costs import count_costs
from ofa_deploy.search_space.genes import canonical, configs_to_genes, genes_to_config, layout, random_genes

W10, W12 = "ofa_mbv3_d234_e346_k357_w1.0", "ofa_mbv3_d234_e346_k357_w1.2"


def test_gene_roundtrip_and_layout():
    rng = np.random.default_rng(0)
    cfgs = [SubnetConfig.sample(rng) for _ in range(20)] + [SubnetConfig.max(), SubnetConfig.min()]
    genes = configs_to_genes(cfgs)
    assert genes.shape == (22, 46) and genes.dtype == np.int8
    assert [genes_to_config(g, W10) for g in genes] == cfgs
    lay = layout(W10)
    assert lay.active(configs_to_genes([SubnetConfig.uniform(3, 3, 2, 160)])).sum() == 10
    # canonical rows ignore the genes of skipped slots
    a = SubnetConfig.uniform(3, 3, 2, 160)
    b = SubnetConfig(tuple(7 if i % 4 == 3 else 3 for i in range(20)), a.e, a.d, 160)
    ga, gb = configs_to_genes([a, b])
    assert not (ga == gb).all() and (canonical(ga[None], W10) == canonical(gb[None], W10)).all()


def test_encoding_matches_ofa_layout():
    cfg = SubnetConfig(ks=(3, 5, 7, 3) * 5, e=(6, 4, 3, 6) * 5, d=(2, 3, 4, 2, 3), image_size=132)
    f = encode_configs([cfg])[0]
    assert f.shape == (145,) and n_features(W10) == 145 and f.dtype == np.float32
    assert set(np.unique(f)) == {0.0, 1.0}
    assert f[:25].tolist() == [1.0 if r == 132 else 0.0 for r in range(128, 225, 4)]  # resolution first (OFA order)
    k, e = f[25:85].reshape(20, 3), f[85:145].reshape(20, 3)
    active = [j < cfg.d[s] for s in range(5) for j in range(4)]
    for slot in range(20):
        if active[slot]:
            assert k[slot].tolist() == [float(cfg.ks[slot] == v) for v in (3, 5, 7)]
            assert e[slot].tolist() == [float(cfg.e[slot] == v) for v in (3, 4, 6)]
        else:  # skipped blocks are all zeros
            assert k[slot].sum() == 0 and e[slot].sum() == 0
    assert f.sum() == 1 + 2 * sum(cfg.d)


def test_encoding_vectorised_equals_per_row():
    genes = random_genes(np.random.default_rng(1), 50, W10)
    batch = encode(genes, W10)
    rows = np.stack([encode(g[None], W10)[0] for g in genes])
    assert (batch == rows).all()


@pytest.mark.parametrize("space,n_classes", [(W10, None), (W12, None), (W10, 10)])
def test_fast_path_equals_count_costs_exactly(space, n_classes):
    rng = np.random.default_rng(7)
    genes = random_genes(rng, 150, space)
    ct = cost_tables(space, n_classes)
    fp32, int8 = ct.evaluate(genes, 4), ct.evaluate(genes, 1)
    for i, g in enumerate(genes):
        costs = count_costs(genes_to_config(g, space), n_classes)
        assert fp32["macs"][i] == costs.macs
        assert fp32["params"][i] == costs.params
        assert fp32["bytes"][i] == costs.bytes(4) and int8["bytes"][i] == costs.bytes(1)
        assert fp32["intensity"][i] == costs.intensity(4) and int8["intensity"][i] == costs.intensity(1)


def test_argmin_additive_is_exact_and_acts_are_attached():
    ct = cost_tables(W10)
    macs, row = argmin_additive(*ct.macs, W10)
    assert macs == count_costs(SubnetConfig.min()).macs == 41_476_224
    assert lookup(row[None], *ct.macs, W10)[0] == macs
    acts = dict((l.name, a) for l, a in layers_with_acts(SubnetConfig.max()))
    assert acts["first_conv"] == "h_swish" and acts["blocks.1.expand"] == "relu"
    assert acts["blocks.9.dw7x7"] == "h_swish" and acts["blocks.9.project"] is None and acts["classifier"] is None
