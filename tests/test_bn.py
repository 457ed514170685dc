import pytest
import torch

import ofa_deploy as od


def test_recalibration_sets_exact_batch_statistics():
    torch.manual_seed(0)
    model = od.OFAMobileNetV3().extract(od.SubnetConfig.min())
    batches = [torch.randn(4, 3, 128, 128) * 2 + 1 for _ in range(3)]
    assert od.recalibrate_bn(model, batches) == 12
    assert not model.training and all(not m.training for m in model.modules())
    # first BN sees conv(x): its running mean must be the mean over all 12 images
    with torch.no_grad():
        conv_out = torch.cat([model.first_conv.conv(x) for x in batches])
    bn = model.first_conv.bn
    torch.testing.assert_close(bn.running_mean, conv_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, conv_out.var((0, 2, 3)), rtol=1e-3, atol=1e-4)
    assert bn.momentum == 0.1  # restored


def test_recalibration_changes_outputs_and_needs_data():
    torch.manual_seed(0)
    model = od.OFAMobileNetV3().extract(od.SubnetConfig.min())
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        before = model(x)
        od.recalibrate_bn(model, [x * 3])
        after = model(x)
    assert not torch.allclose(before, after)
    with pytest.raises(ValueError, match="at least one batch"):
        od.recalibrate_bn(model, [])


def test_recalibration_refuses_the_supernet():
    with pytest.raises(TypeError, match="extract"):
        od.recalibrate_bn(od.OFAMobileNetV3(), [torch.zeros(1, 3, 128, 128)])
