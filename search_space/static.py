"""Plain PyTorch MobileNetV3 subnets: what the supernet extracts and what gets exported.

Only standard modules (Conv2d, BatchNorm2d, Linear, ReLU, Hardswish, Hardsigmoid), so that ONNX
export, TVM and any other runtime see an ordinary CNN. Parameter names follow the official static
MobileNetV3 of once-for-all (``blocks.3.conv.depth_conv.conv.weight`` ...), so its static
checkpoints load too.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .config import SubnetConfig
from .space import SearchSpace

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "h_swish": nn.Hardswish}


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = None,
                bn: bool = True, eps: float = 1e-5) -> nn.Sequential:
    """conv -> [bn] -> [act], 'same' padding, no conv bias (BN provides it)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv"] = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    if bn:
        layers["bn"] = nn.BatchNorm2d(cout, eps=eps)
    if act is not None:
        layers["act"] = ACTIVATIONS[act]()
    return nn.Sequential(layers)


class SqueezeExcite(nn.Module):
    """x * h_sigmoid(expand(relu(reduce(mean(x))))) — MobileNetV3's SE."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", nn.Conv2d(channels, hidden, 1)),
            ("relu", nn.ReLU()),
            ("expand", nn.Conv2d(hidden, channels, 1)),
            ("h_sigmoid", nn.Hardsigmoid()),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(nn.functional.adaptive_avg_pool2d(x, 1))


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise [-> SE] -> 1x1 project [+ x]."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, mid: int, act: str,
                 se_hidden: int | None, eps: float = 1e-5) -> None:
        super().__init__()
        self.inverted_bottleneck = conv_bn_act(cin, mid, 1, act=act, eps=eps) if mid != cin else None
        self.depth_conv = conv_bn_act(mid, mid, kernel, stride, groups=mid, act=act, eps=eps)
        if se_hidden is not None:
            self.depth_conv.add_module("se", SqueezeExcite(mid, se_hidden))
        self.point_linear = conv_bn_act(mid, cout, 1, eps=eps)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.inverted_bottleneck is None else self.inverted_bottleneck(x)
        y = self.point_linear(self.depth_conv(y))
        return x + y if self.residual else y


class ResidualBlock(nn.Module):
    """Wrapper that keeps the official ``blocks.N.conv.*`` parameter names."""

    def __init__(self, conv: MBConv) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MobileNetV3(nn.Module):
    """A static OFA subnet: stem, first block, the active MBConv blocks, head."""

    def __init__(self, cfg: SubnetConfig, n_classes: int | None = None) -> None:
        super().__init__()
        sp = cfg.search_space
        self.config = cfg
        self.n_classes = n_classes or sp.n_classes
        self.first_conv, first_block = build_stem(sp)
        blocks = [first_block]
        for b in cfg.blocks():
            mid = sp.mid_channels(b.in_channels, b.expand)
            se = sp.se_channels(mid) if b.use_se else None
            blocks.append(ResidualBlock(MBConv(b.in_channels, b.out_channels, b.kernel, b.stride, mid, b.act, se,
                                               sp.bn_eps)))
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer, self.feature_mix_layer, self.classifier = build_head(sp, self.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        return forward_head(self, x)


def build_stem(sp: SearchSpace) -> tuple[nn.Sequential, ResidualBlock]:
    """The fixed first conv and first block (3x3 depthwise, expand ratio 1, so no 1x1 expansion)."""
    c0, c1 = sp.stem_channels, sp.first_block_channels
    first_conv = conv_bn_act(3, c0, 3, 2, act=sp.stem_head_act, eps=sp.bn_eps)
    first_block = ResidualBlock(MBConv(c0, c1, 3, 1, c0, "relu", None, sp.bn_eps))
    return first_conv, first_block


def build_head(sp: SearchSpace, n_classes: int) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """final 1x1 expand (BN, h-swish in MobileNetV3) -> [global pool] -> 1x1 feature mix (no BN) -> classifier."""
    final_expand = conv_bn_act(sp.stages[-1].out_channels, sp.final_expand_channels, 1, act=sp.stem_head_act,
                               eps=sp.bn_eps)
    feature_mix = conv_bn_act(sp.final_expand_channels, sp.last_channels, 1, act=sp.stem_head_act, bn=False)
    classifier = nn.Sequential(OrderedDict([
        ("dropout", nn.Dropout(sp.dropout)),
        ("linear", nn.Linear(sp.last_channels, n_classes)),
    ]))
    return final_expand, feature_mix, classifier


def forward_head(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Shared by the static net and the supernet: the head has no elastic dimension."""
    x = net.final_expand_layer(x)
    x = nn.functional.adaptive_avg_pool2d(x, 1)
    x = net.feature_mix_layer(x)
    return net.classifier(torch.flatten(x, 1))
