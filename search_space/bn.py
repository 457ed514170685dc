"""Batch-norm recalibration.

A subnet taken from a supernet shares BN parameters with thousands of other subnets, so the running
statistics stored in the supernet fit none of them well. OFA therefore re-estimates them on a few
batches of training data before evaluating or exporting any subnet; so do we.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .supernet import ElasticBatchNorm2d


@torch.no_grad()
def recalibrate_bn(module: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Reset and re-estimate every BatchNorm2d's running mean/variance of ``module`` from data.

    The statistics become the exact average over all given batches (cumulative average, not an
    exponential one), so the result does not depend on a momentum. Works on static subnets; call
    :meth:`OFAMobileNetV3.extract` first for a supernet. Batches may live on the CPU; each is moved to
    the module's device. Returns the number of images seen. The module is left in eval mode.
    """
    if any(isinstance(m, ElasticBatchNorm2d) for m in module.modules()):
        raise TypeError("recalibrate_bn works on static subnets: call supernet.extract(cfg) first")
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = plain mean over batches
    module.eval()
    for m in bns:
        m.train()
    device = next(module.parameters()).device
    seen = 0
    try:
        for x in batches:
            module(x.to(device))
            seen += int(x.shape[0])
    finally:
        for m, (momentum, _) in zip(bns, saved):
            m.momentum = momentum
        module.eval()
    if seen == 0:
        raise ValueError("recalibrate_bn needs at least one batch")
    return seen


def random_subnet(cfg, seed: int = 0, n_classes: int | None = None) -> nn.Module:
    """A static subnet with seeded random weights whose activations neither vanish nor explode.

    PyTorch's default initialisation shrinks activations layer by layer, so the logits of a deep
    random subnet are nearly the classifier bias, and a numeric comparison of two runtimes on them
    proves nothing. Recalibrating BN on seeded noise normalises every layer, which gives logits
    that depend on every weight. For latency and compiler work only.
    """
    from .static import MobileNetV3

    torch.manual_seed(seed)
    model = MobileNetV3(cfg, n_classes)
    gen = torch.Generator().manual_seed(seed)
    recalibrate_bn(model, [torch.randn(4, 3, cfg.image_size, cfg.image_size, generator=gen)])
    return model.eval()
