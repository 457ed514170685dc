"""Shipping defaults: the float16 checkpoint loads into a float32 supernet that computes the same subnet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ofa_deploy.shipped as shipped
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.search.predictor import TrainConfig, load_predictor, save_predictor, train_predictor
from ofa_deploy.search_space import OFAMobileNetV3, SubnetConfig, load_supernet, save_supernet
from ofa_deploy.search_space.genes import random_genes

SPACE = "ofa_mbv3_d234_e346_k357_w1.0"


@pytest.fixture()
def defaults_dir(tmp_path, monkeypatch):
    d = tmp_path / "defaults"
    monkeypatch.setattr(shipped, "DEFAULTS_DIR", d)
    monkeypatch.setattr(shipped, "DEFAULT_SUPERNET", d / "supernet.pth")
    monkeypatch.setattr(shipped, "DEFAULT_PREDICTOR", d / "acc_predictor.pt")
    return d


def _predictor(path, n_classes):
    genes = random_genes(np.random.default_rng(0), 40, SPACE)
    acc = np.random.default_rng(1).uniform(0.3, 0.6, 40)
    save_predictor(train_predictor(genes, acc, space=SPACE, n_classes=n_classes, dataset="demo",
                                   config=TrainConfig(epochs=2, seed=0)), path)


def test_ship_stores_half_and_loads_as_float32(tmp_path, defaults_dir):
    torch.manual_seed(0)
    net = OFAMobileNetV3(SPACE, n_classes=10)
    save_supernet(net, tmp_path / "s.pth", classes=[f"c{i}" for i in range(10)])
    _predictor(tmp_path / "p.pt", 10)
    sup, pred = shipped.ship(tmp_path / "s.pth", tmp_path / "p.pt", "made by a test")
    assert sup.stat().st_size < 0.6 * (tmp_path / "s.pth").stat().st_size  # float16: about half
    assert "made by a test" in (defaults_dir / "PROVENANCE.md").read_text()
    loaded = load_supernet(sup, SPACE)
    assert loaded.classes == [f"c{i}" for i in range(10)]
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    cfg = SubnetConfig.min(SPACE, 128)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        want, got = net.eval().extract(cfg)(x), loaded.extract(cfg)(x)
    assert torch.allclose(got, want, rtol=1e-2, atol=1e-2) and not torch.equal(got, want)  # rounding only
    assert load_predictor(pred).meta.n_classes == 10


def test_ship_refuses_a_predictor_of_another_supernet(tmp_path, defaults_dir):
    save_supernet(OFAMobileNetV3(SPACE, n_classes=10), tmp_path / "s.pth")
    _predictor(tmp_path / "p.pt", 1000)
    with pytest.raises(OfaDeployError, match="1000 classes"):
        shipped.ship(tmp_path / "s.pth", tmp_path / "p.pt", "x")
    assert not defaults_dir.exists() or not any(defaults_dir.iterdir())  # nothing half-installed


@pytest.mark.skipif(shipped.default_supernet() is None, reason="this installation ships no default supernet")
def test_shipped_default_is_a_trained_supernet_with_its_predictor(tmp_path):
    """The checkpoint in ``ofa_deploy/defaults`` classifies demo images it never saw (another seed):
    its smallest and largest subnets, BN recalibrated, well above the 10 % of an untrained one; the
    predictor is the one made for it (same space and classes)."""
    from ofa_deploy.data import calibration_batches, check_dataset, evaluate, load_tensors, make_demo_dataset
    from ofa_deploy.search_space import recalibrate_bn

    data = make_demo_dataset(tmp_path / "fresh", seed=12345, train_per_class=13, val_per_class=30)
    net = load_supernet(shipped.DEFAULT_SUPERNET)
    predictor = load_predictor(shipped.DEFAULT_PREDICTOR)
    assert (predictor.meta.space, predictor.meta.n_classes) == (net.space.name, net.n_classes)
    assert list(net.classes) == list(check_dataset(data))  # labels below index the same class order
    assert shipped.DEFAULT_SUPERNET.stat().st_size + shipped.DEFAULT_PREDICTOR.stat().st_size < 35e6
    images, labels = load_tensors(data, "val", 128)
    for cfg in (SubnetConfig.min(SPACE, 128), SubnetConfig.max(SPACE, 128)):
        static = net.extract(cfg)
        recalibrate_bn(static, calibration_batches(data, 128, n_images=128))
        acc = evaluate(static, images, labels)
        assert acc > 0.8, (cfg.id, acc)
