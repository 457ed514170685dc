"""The analytic cost counter against the official figures and against PyTorch hooks."""

import numpy as np
import pytest
import torch
from torch import nn

from ofa_deploy import MobileNetV3, SubnetConfig
from ofa_deploy.search_space.costs import count_costs


@pytest.mark.parametrize("cfg,macs_m", [
    (SubnetConfig.uniform(7, 6, 4, 224), 566.17),  # official counter, all-max
    (SubnetConfig.uniform(3, 3, 2, 160), 63.24),  # all-min at 160
    (SubnetConfig.uniform(5, 4, 3, 192), 185.10),
])
def test_official_mac_figures(cfg, macs_m):
    assert round(count_costs(cfg).macs / 1e6, 2) == macs_m


def _hook_counts(model: nn.Module, image_size: int) -> tuple[int, list[tuple[int, int, int]]]:
    """MACs counted from real tensor shapes during a forward pass (independent of costs.py)."""
    macs, shapes = [0], []

    def conv_hook(m, inp, out):
        macs[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        if m.kernel_size[0] > 1 or m.groups > 1 or out.shape[-1] > 1:
            shapes.append(tuple(out.shape[1:]))

    def linear_hook(m, inp, out):
        macs[0] += m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    return macs[0], shapes


SPACES_BY_SEED = ("ofa_mbv3_d234_e346_k357_w1.0", "ofa_mbv3_relu_nose_d234_e346_k357_w1.0",
                  "ofa_mbv3_d234_e346_k357_w1.2")


@pytest.mark.parametrize("seed", range(6))
def test_macs_params_and_shapes_agree_with_pytorch(seed):
    space = SPACES_BY_SEED[seed % 3]
    cfg = SubnetConfig.sample(np.random.default_rng(seed), space)
    model = MobileNetV3(cfg).eval()
    costs = count_costs(cfg)
    macs, shapes = _hook_counts(model, cfg.image_size)
    assert costs.macs == macs
    assert costs.params == sum(p.numel() for p in model.parameters())
    counted = [l.out_shape for l in costs.layers if l.op in ("conv", "dwconv") and l.out_shape[1] > 1]
    assert counted == shapes


def test_bytes_and_intensity():
    costs = count_costs(SubnetConfig.max())
    assert costs.bytes(4) == 4 * costs.bytes(1)
    assert costs.intensity(1) == pytest.approx(4 * costs.intensity(4))
    assert costs.intensity(4) == pytest.approx(2 * costs.macs / costs.bytes(4))
    # deployed weights: conv weights + one folded bias per BN channel; first conv 16x3x3x3 + 16
    first = costs.layers[0]
    assert first.weight_elems == 16 * 27 + 16 and first.act_read == 3 * 224 * 224 and first.act_write == 16 * 112 * 112
    # a residual projection reads its shortcut too
    project = next(l for l in costs.layers if l.name == "blocks.2.project")
    assert project.act_read == project.in_shape[0] * 56 * 56 + project.out_shape[0] * 56 * 56
    # pointwise convs on big maps are memory bound, the 1x1 head on a 7x7 map much less so
    assert 1 < costs.intensity(4) < 20


def test_bigger_resolution_costs_more_and_depthwise_is_low_intensity():
    small, large = count_costs(SubnetConfig.max(image_size=128)), count_costs(SubnetConfig.max(image_size=224))
    assert large.macs > 2.5 * small.macs
    # a stride-1 k x k depthwise layer does k^2 MACs per element read and written once: at most 2k^2/8 ops/B fp32
    cfg = SubnetConfig.uniform(3, 6, 4, 224)
    dw = [l for l in count_costs(cfg).layers if l.op == "dwconv" and l.in_shape[1:] == l.out_shape[1:]]
    assert dw and all(l.intensity(4) <= 2 * 9 / 8 for l in dw)  # weights only lower it
    assert dw[0].intensity(4) == pytest.approx(2 * 9 / 8, rel=1e-3)  # 112x112: weights negligible
    # while a pointwise conv with 40+ input channels is far denser
    pw = [l for l in count_costs(cfg).layers if l.name.endswith("expand") and l.in_shape[0] >= 40]
    assert min(l.intensity(4) for l in pw) > 10
