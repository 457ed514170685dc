"""The elastic OFA MobileNetV3 supernet.

Every elastic block holds the weights of its largest version; a subnet uses the top-left slice of
the 1x1 convs and BN, and a *transformed* centre of the depthwise kernel: 7x7 -> 5x5 -> 3x3, each
step multiplying the cropped centre by a learned (k^2 x k^2) matrix, as in the OFA paper. Module
and parameter names match the official once-for-all checkpoints, so their ``state_dict`` loads
as is.

The same ``active_*`` functions serve the forward pass and :meth:`OFAMobileNetV3.extract`, so the
supernet and the static subnet it extracts compute the same function by construction.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ofa_deploy.errors import ConfigError

from .config import SubnetConfig
from .space import DEFAULT_SPACE, SearchSpace, get_space
from .static import ACTIVATIONS, MobileNetV3, ResidualBlock, build_head, build_stem, forward_head

log = logging.getLogger(__name__)


class ElasticPointwiseConv(nn.Module):
    """1x1 conv whose active output width is a prefix of the full one (input width follows x)."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(max_in, max_out, 1, bias=False)
        self.active_out = max_out

    def active_weight(self, out_channels: int, in_channels: int) -> torch.Tensor:
        return self.conv.weight[:out_channels, :in_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.active_weight(self.active_out, x.shape[1]))


class ElasticDepthwiseConv(nn.Module):
    """Depthwise conv with elastic kernel size through kernel-transformation matrices."""

    def __init__(self, max_channels: int, kernels: tuple[int, ...], stride: int) -> None:
        super().__init__()
        self.kernels = tuple(sorted(set(kernels)))
        self.stride = stride
        k = self.kernels[-1]
        self.conv = nn.Conv2d(max_channels, max_channels, k, stride, k // 2, groups=max_channels, bias=False)
        for small, large in zip(self.kernels, self.kernels[1:]):
            # Identity init: a freshly built supernet starts with plain centre cropping.
            self.register_parameter(f"{large}to{small}_matrix", nn.Parameter(torch.eye(small * small)))
        self.active_kernel = k

    def active_weight(self, channels: int, kernel: int) -> torch.Tensor:
        """Crop the centre step by step (7->5->3), transforming each crop with its matrix."""
        w = self.conv.weight[:channels]
        for small, large in reversed(list(zip(self.kernels, self.kernels[1:]))):
            if large <= kernel:
                break
            start = (large - small) // 2
            centre = w[:, :, start:start + small, start:start + small].reshape(-1, small * small)
            matrix = getattr(self, f"{large}to{small}_matrix")
            w = F.linear(centre, matrix).reshape(channels, 1, small, small)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, k = x.shape[1], self.active_kernel
        return F.conv2d(x, self.active_weight(c, k), None, self.stride, k // 2, 1, c)


class ElasticBatchNorm2d(nn.Module):
    """BatchNorm over a channel prefix.

    With all channels it is a plain BatchNorm2d (running statistics update in training). On a
    prefix it normalises with the sliced parameters and, like the official code, leaves running
    statistics alone: re-estimate them per subnet with :func:`recalibrate_bn` instead.
    """

    def __init__(self, max_channels: int, eps: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(max_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, bn = x.shape[1], self.bn
        if c == bn.num_features:
            return bn(x)
        return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                            bn.training or not bn.track_running_stats, 0.0, bn.eps)


class ElasticSqueezeExcite(nn.Module):
    """SE whose hidden width follows the active channel count (``space.se_channels``)."""

    def __init__(self, max_channels: int, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        hidden = space.se_channels(max_channels)
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", nn.Conv2d(max_channels, hidden, 1)),
            ("relu", nn.ReLU()),
            ("expand", nn.Conv2d(hidden, max_channels, 1)),
            ("h_sigmoid", nn.Hardsigmoid()),
        ]))

    def active_params(self, channels: int) -> dict[str, torch.Tensor]:
        """Static SE parameters (names of :class:`static.SqueezeExcite`) for ``channels``."""
        h = self.space.se_channels(channels)
        return {
            "fc.reduce.weight": self.fc.reduce.weight[:h, :channels],
            "fc.reduce.bias": self.fc.reduce.bias[:h],
            "fc.expand.weight": self.fc.expand.weight[:channels, :h],
            "fc.expand.bias": self.fc.expand.bias[:channels],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.active_params(x.shape[1])
        y = F.adaptive_avg_pool2d(x, 1)
        y = F.relu(F.conv2d(y, p["fc.reduce.weight"], p["fc.reduce.bias"]))
        y = F.hardsigmoid(F.conv2d(y, p["fc.expand.weight"], p["fc.expand.bias"]))
        return x * y


class ElasticMBConv(nn.Module):
    """MBConv with elastic kernel size and expand ratio (input/output widths are fixed)."""

    def __init__(self, space: SearchSpace, cin: int, cout: int, stride: int, act: str, use_se: bool) -> None:
        super().__init__()
        self.space, self.cin, self.cout = space, cin, cout
        max_mid = space.mid_channels(cin, max(space.expand_choices))
        eps = space.bn_eps
        self.inverted_bottleneck = nn.Sequential(OrderedDict([
            ("conv", ElasticPointwiseConv(cin, max_mid)), ("bn", ElasticBatchNorm2d(max_mid, eps)),
            ("act", ACTIVATIONS[act]()),
        ]))
        self.depth_conv = nn.Sequential(OrderedDict([
            ("conv", ElasticDepthwiseConv(max_mid, space.kernel_choices, stride)),
            ("bn", ElasticBatchNorm2d(max_mid, eps)), ("act", ACTIVATIONS[act]()),
        ]))
        if use_se:
            self.depth_conv.add_module("se", ElasticSqueezeExcite(max_mid, space))
        self.point_linear = nn.Sequential(OrderedDict([
            ("conv", ElasticPointwiseConv(max_mid, cout)), ("bn", ElasticBatchNorm2d(cout, eps)),
        ]))
        self.residual = stride == 1 and cin == cout

    def set_active(self, kernel: int, expand: int) -> None:
        self.inverted_bottleneck.conv.active_out = self.space.mid_channels(self.cin, expand)
        self.depth_conv.conv.active_kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.point_linear(self.depth_conv(self.inverted_bottleneck(x)))
        return x + y if self.residual else y

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder hidden channels by importance (L1 norm of their projection weights), largest first.

        OFA does this before elastic-expand training so that the channel prefix a small expand
        ratio keeps holds the most important channels. It permutes every tensor that touches the
        hidden channels consistently, so the largest subnet computes exactly the same function.
        """
        importance = self.point_linear.conv.conv.weight.abs().sum(dim=(0, 2, 3))
        order = torch.argsort(importance, descending=True)
        ib, dw = self.inverted_bottleneck, self.depth_conv
        ib.conv.conv.weight.copy_(ib.conv.conv.weight[order])
        for bn in (ib.bn.bn, dw.bn.bn):
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(getattr(bn, name)[order])
        dw.conv.conv.weight.copy_(dw.conv.conv.weight[order])
        self.point_linear.conv.conv.weight.copy_(self.point_linear.conv.conv.weight[:, order])
        if hasattr(dw, "se"):
            fc = dw.se.fc
            fc.reduce.weight.copy_(fc.reduce.weight[:, order])
            fc.expand.weight.copy_(fc.expand.weight[order])
            fc.expand.bias.copy_(fc.expand.bias[order])
            # and the SE hidden units, by the L1 norm of their expand weights
            se_order = torch.argsort(fc.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True)
            fc.reduce.weight.copy_(fc.reduce.weight[se_order])
            fc.reduce.bias.copy_(fc.reduce.bias[se_order])
            fc.expand.weight.copy_(fc.expand.weight[:, se_order])

    def active_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the active static block, keyed like :class:`static.MBConv`."""
        mid = self.inverted_bottleneck.conv.active_out
        kernel = self.depth_conv.conv.active_kernel
        out: dict[str, torch.Tensor] = {
            "inverted_bottleneck.conv.weight": self.inverted_bottleneck.conv.active_weight(mid, self.cin),
            "depth_conv.conv.weight": self.depth_conv.conv.active_weight(mid, kernel),
            "point_linear.conv.weight": self.point_linear.conv.active_weight(self.cout, mid),
        }
        for part, width in (("inverted_bottleneck", mid), ("depth_conv", mid), ("point_linear", self.cout)):
            bn = getattr(self, part).bn.bn
            for name in ("weight", "bias", "running_mean", "running_var"):
                out[f"{part}.bn.{name}"] = getattr(bn, name)[:width]
            out[f"{part}.bn.num_batches_tracked"] = bn.num_batches_tracked
        if hasattr(self.depth_conv, "se"):
            for name, t in self.depth_conv.se.active_params(mid).items():
                out[f"depth_conv.se.{name}"] = t
        return out


class OFAMobileNetV3(nn.Module):
    """The OFA MobileNetV3 supernet of one :class:`SearchSpace`."""

    def __init__(self, space: str | SearchSpace = DEFAULT_SPACE, n_classes: int | None = None) -> None:
        super().__init__()
        self.space = get_space(space)
        self.n_classes = n_classes or self.space.n_classes
        self.classes: list[str] | None = None  # class names, if the checkpoint carries them
        sp = self.space
        self.first_conv, first_block = build_stem(sp)
        blocks: list[nn.Module] = [first_block]
        for stage, spec in enumerate(sp.stages):
            cin = sp.stage_in_channels(stage)
            for j in range(sp.max_depth):
                blocks.append(ResidualBlock(ElasticMBConv(sp, cin, spec.out_channels, spec.stride if j == 0 else 1,
                                                          spec.act, spec.use_se)))
                cin = spec.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer, self.feature_mix_layer, self.classifier = build_head(sp, self.n_classes)
        self.active = SubnetConfig.max(sp.name)

    def set_active_subnet(self, cfg: SubnetConfig) -> None:
        """Make ``cfg`` the network that :meth:`forward` computes."""
        if cfg.space != self.space.name:
            raise ConfigError(f"subnet: space {cfg.space!r} does not match the supernet's {self.space.name!r}")
        cfg.validate()
        for slot, (k, e) in enumerate(zip(cfg.ks, cfg.e)):
            self.blocks[1 + slot].conv.set_active(k, e)
        self.active = cfg

    def active_block_indices(self) -> list[int]:
        """Indices into ``self.blocks`` that run for the active subnet (block 0 always runs)."""
        return [0] + [1 + b.slot for b in self.active.blocks()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for i in self.active_block_indices():
            x = self.blocks[i](x)
        return forward_head(self, x)

    def sort_channels(self) -> None:
        """Importance-sort the hidden channels of every elastic block (before elastic expand)."""
        for block in self.blocks[1:]:
            block.conv.sort_channels()

    @torch.no_grad()
    def extract(self, cfg: SubnetConfig | None = None) -> MobileNetV3:
        """A standalone static copy of subnet ``cfg`` (default: the active one), in eval mode."""
        if cfg is not None:
            self.set_active_subnet(cfg)
        cfg = self.active
        net = MobileNetV3(cfg, self.n_classes)
        state: dict[str, torch.Tensor] = {}
        for name, t in self.state_dict().items():
            if not name.startswith("blocks.") or name.startswith("blocks.0."):
                state[name] = t
        for static_i, super_i in enumerate(self.active_block_indices()[1:], start=1):
            for name, t in self.blocks[super_i].conv.active_state_dict().items():
                state[f"blocks.{static_i}.conv.{name}"] = t
        net.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
        return net.eval()
