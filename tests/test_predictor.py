"""The accuracy predictor: learns a synthetic target, saves/loads with checked metadata."""

import numpy as np
import pytest
import torch

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.latency.tables import cost_tables
from ofa_deploy.search.predictor import (AccuracyPredictorNet, Predictor, PredictorMeta, TrainConfig, kendall_tau,
                                         load_predictor, rmse, save_predictor, train_predictor)
from ofa_deploy.search_space.genes import random_genes

SPACE = "ofa_mbv3_d234_e346_k357_w1.0"


@pytest.fixture(scope="module")
def trained():
    """accuracy = f(MACs) + noise on 1000 random subnets; 80/20 split."""
    rng = np.random.default_rng(0)
    genes = random_genes(rng, 1000, SPACE)
    macs = cost_tables(SPACE).evaluate(genes)["macs"]
    acc = 0.80 - 0.04 * np.log(595e6 / macs) + rng.normal(0, 0.002, len(macs))
    return train_predictor(genes, acc, space=SPACE, n_classes=1000, dataset="synthetic",
                           config=TrainConfig(epochs=60, seed=0)), genes, acc


def test_predictor_learns_synthetic_target(trained):
    predictor, genes, acc = trained
    m = predictor.meta.metrics
    assert m["n_train"] == 800 and m["n_test"] == 200
    assert m["kendall_tau"] > 0.8, m
    assert m["rmse"] < 0.006, m
    assert predictor.meta.mean_acc == pytest.approx(acc.mean(), abs=0.002)
    assert np.sort(acc)[-201] <= m["acc_max"] <= acc.max() and acc.min() <= m["acc_min"] <= np.sort(acc)[200]
    assert predictor.predict(genes[:7]).shape == (7,)


def test_official_layout_and_mean_bias():
    net = AccuracyPredictorNet(145, base_acc=0.7)
    names = set(net.state_dict())
    assert {"layers.0.0.weight", "layers.2.0.bias", "layers.3.weight", "base_acc"} <= names
    assert "layers.3.bias" not in names  # OFA: the output layer has no bias, base_acc replaces it
    assert [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)] == [400, 400, 400, 1]
    with torch.no_grad():
        torch.nn.init.zeros_(net.layers[3].weight)
        assert torch.allclose(net(torch.rand(3, 145)), torch.full((3,), 0.7))


def test_save_load_roundtrip_and_checks(trained, tmp_path):
    predictor, genes, _ = trained
    path = tmp_path / "p.pt"
    save_predictor(predictor, path)
    loaded = load_predictor(path)
    assert loaded.meta == predictor.meta
    assert np.allclose(loaded.predict(genes[:20]), predictor.predict(genes[:20]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.pt"]  # atomic: no temp files left

    def bad(meta_changes, match):
        meta = {**predictor.meta.__dict__, **meta_changes}
        torch.save({"state_dict": predictor.net.state_dict(), "meta": meta}, tmp_path / "bad.pt")
        with pytest.raises(OfaDeployError, match=match):
            load_predictor(tmp_path / "bad.pt")

    bad({"space": "mbv2_space"}, "unknown space 'mbv2_space'")
    bad({"encoding_version": 99}, "encoding v99")
    bad({"space": "ofa_mbv3_d234_e346_k357_w1.2", "hidden": 64}, "do not fit space")
    with pytest.raises(OfaDeployError, match="not found"):
        load_predictor(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(OfaDeployError, match="not a readable predictor"):
        load_predictor(tmp_path / "junk.pt")


def test_metrics():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert kendall_tau(a, a) == 1.0 and kendall_tau(a, -a) == -1.0
    assert kendall_tau(a, np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(4 / 6)
    assert rmse(a, a + 0.5) == 0.5


def test_too_few_samples_is_a_user_error():
    genes = random_genes(np.random.default_rng(0), 5, SPACE)
    with pytest.raises(OfaDeployError, match="at least 10"):
        train_predictor(genes, np.ones(5), space=SPACE, n_classes=10, dataset="x")
    assert isinstance(Predictor(AccuracyPredictorNet(145), PredictorMeta(SPACE, 10, "x", 0.5)).space, str)
