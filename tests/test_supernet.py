"""The supernet against the official implementation's logits, plus structure checks."""

import numpy as np
import pytest
import torch
from torch import nn

import ofa_deploy as od
from ofa_deploy import CheckpointError, SubnetConfig
from tests.conftest import reference_input

STATIC_LEAF_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.Hardswish, nn.Hardsigmoid, nn.Dropout)


@pytest.mark.parametrize("index", range(8))
def test_logits_match_official_implementation(reference, reference_supernet, index):
    record = reference["records"][index]
    cfg = SubnetConfig.from_dict(record["arch"])
    x = torch.from_numpy(reference_input(reference["seed"], cfg.image_size))
    expected = reference["logits"][index]
    reference_supernet.set_active_subnet(cfg)
    with torch.no_grad():
        from_supernet = reference_supernet(x).numpy()
        static = reference_supernet.extract(cfg)
        from_static = static(x).numpy()
    np.testing.assert_allclose(from_supernet, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(from_static, expected, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in static.parameters()) == record["n_params"]
    assert not static.training
    leaves = [m for m in static.modules() if not list(m.children())]
    assert all(isinstance(m, STATIC_LEAF_TYPES) for m in leaves), {type(m).__name__ for m in leaves}


def test_kernel_transform_matrices_are_used(reference_supernet):
    """A 3x3 subnet kernel is the transformed centre, not the plain crop of the 7x7 kernel."""
    dw = reference_supernet.blocks[1].conv.depth_conv.conv
    full = dw.conv.weight
    w5 = dw.active_weight(96, 5)
    expected5 = (full[:, :, 1:6, 1:6].reshape(96, 25) @ getattr(dw, "7to5_matrix").T).reshape(96, 1, 5, 5)
    torch.testing.assert_close(w5, expected5)
    w3 = dw.active_weight(96, 3)
    expected3 = (expected5[:, :, 1:4, 1:4].reshape(96, 9) @ getattr(dw, "5to3_matrix").T).reshape(96, 1, 3, 3)
    torch.testing.assert_close(w3, expected3)
    assert not torch.allclose(w3, full[:, :, 2:5, 2:5])


def test_extract_is_a_copy(reference_supernet):
    cfg = SubnetConfig.min()
    static = reference_supernet.extract(cfg)
    with torch.no_grad():
        static.first_conv.conv.weight.zero_()
    assert reference_supernet.first_conv.conv.weight.abs().sum() > 0


def test_wrong_space_checkpoint_names_parameter_and_shapes(reference):
    with pytest.raises(CheckpointError, match=r"parameter 'first_conv.conv.weight' has shape \(16, 3, 3, 3\), expected \(24, 3, 3, 3\)"):
        od.load_supernet(reference["checkpoint_path"], space="ofa_mbv3_d234_e346_k357_w1.2")


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        od.load_supernet(tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint \(a text file\)"):
        od.load_supernet(tmp_path / "junk.pth")
    torch.save({"state_dict": {"first_conv.conv.weight": torch.zeros(16, 3, 3, 3)}}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="parameter 'first_conv.bn.weight' is missing"):
        od.load_supernet(tmp_path / "partial.pth")


def test_save_and_reload_round_trip(tmp_path):
    torch.manual_seed(0)
    net = od.OFAMobileNetV3()
    od.save_supernet(net, tmp_path / "s.pth", epoch=3)
    back = od.load_supernet(tmp_path / "s.pth")
    for (name, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert torch.load(tmp_path / "s.pth", weights_only=True)["epoch"] == 3


@pytest.mark.parametrize("space", ["ofa_mbv3_d234_e346_k357_w1.2", "ofa_mbv3_relu_nose_d234_e346_k357_w1.0"])
def test_other_space_supernet_runs(space):
    torch.manual_seed(0)
    net = od.OFAMobileNetV3(space).eval()
    cfg = SubnetConfig.min(space)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        static = net.extract(cfg)
        torch.testing.assert_close(static(x), (net.set_active_subnet(cfg), net(x))[1])
    modules = {type(m).__name__ for m in static.modules()}
    assert ("Hardswish" in modules) == (space != "ofa_mbv3_relu_nose_d234_e346_k357_w1.0")


def test_class_count_comes_from_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    od.save_supernet(od.OFAMobileNetV3(n_classes=10), tmp_path / "ten.pth")
    net = od.load_supernet(tmp_path / "ten.pth")
    assert net.n_classes == 10
    static = net.extract(SubnetConfig.min())
    assert static(torch.zeros(1, 3, 128, 128)).shape == (1, 10)
    from ofa_deploy.search_space.costs import count_costs

    assert count_costs(SubnetConfig.min(), n_classes=10).params == sum(p.numel() for p in static.parameters())


def test_channel_sorting_keeps_the_largest_network_and_orders_importance(reference):
    net = od.load_supernet(reference["checkpoint_path"])
    x = torch.from_numpy(reference_input(0, 160, batch=1))
    cfg = SubnetConfig.max(image_size=160)
    net.set_active_subnet(cfg)
    with torch.no_grad():
        before = net(x)
        net.sort_channels()
        after = net(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    importance = net.blocks[5].conv.point_linear.conv.conv.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])
