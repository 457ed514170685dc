"""The representative workloads of a search space: every distinct block variant, stem and head.

A subnet of the OFA MobileNetV3 space is a fixed stem (first conv + first block), up to 20
elastic MBConv blocks and a fixed head. A block's compiled code depends only on its shape: the
stage, whether it is the first block of the stage (stride and input width differ), kernel, expand
ratio and resolution. The later blocks of a stage all have the same shape. So at one resolution
the whole space (~10^19 subnets) compiles into the kernels of just

    5 stages x {first, later} x 3 kernels x 3 expands = 90 block variants + stem + head

and these are what ``ofa-deploy tune`` tunes (identical fused tasks across them are tuned once)
and what ``ofa-deploy profile`` times to build the per-block latency table. Fusion never crosses
a block boundary (a block starts with a convolution), so a block compiled on its own runs the
same fused kernels as inside a network.

Each workload exports to a small ONNX model with seeded random weights (latency does not depend
on the values), cached under a content-hashed name so repeated runs do not export again.

**Edges in the network's layout.** Where modules compute in NHWC (CPU targets), a network is
NHWC between its blocks; only its input is NCHW. A block exported with NCHW edges would be
compiled with a transpose at each end and its residual add left outside the projection
convolution (the add meets the NCHW input), i.e. not the kernels it runs inside a network. So
``layout="NHWC"`` workloads take (blocks, head) and give (stem, blocks) channels-last tensors:
the exported model permutes at its edges, and the build folds those permutes against the ones
the layout conversion adds (``compile/worker/build.py``, ``_FoldTransposes``), leaving exactly
the network's fused functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .cache import cache_root
from .search_space import SearchSpace, SubnetConfig, get_space
from .search_space.costs import count_costs
from .search_space.static import MBConv, ResidualBlock, build_head, build_stem, forward_head

log = logging.getLogger(__name__)

WorkloadKind = Literal["stem", "block", "head", "net"]


@dataclass(frozen=True)
class Workload:
    """One distinct piece of compiled code: a block variant, or the stem or head at a resolution."""

    key: str  # stable id, e.g. "r224/s2-first/k5-e4", "r224/stem", "r224/head", "r224/net/k5-e4"
    kind: WorkloadKind
    resolution: int
    input_shape: tuple[int, int, int, int]  # batch 1, in ``layout`` (a stem's or net's input is always the NCHW image)
    stage: int = -1  # blocks only
    first: bool = False  # first block of its stage (stride and input width differ from the later ones)
    kernel: int = 0  # blocks and nets (a net: every block's)
    expand: int = 0
    layout: str = "NCHW"  # layout of the tensors between blocks, at this workload's edges (see the module docstring)

    def to_dict(self) -> dict:
        return {**asdict(self), "input_shape": list(self.input_shape)}


def block_key(resolution: int, stage: int, first: bool, kernel: int, expand: int) -> str:
    return f"r{resolution}/s{stage}-{'first' if first else 'later'}/k{kernel}-e{expand}"


def slot_key(space: str | SearchSpace, slot: int, kernel: int, expand: int, resolution: int) -> str:
    """The workload that block slot ``slot`` (0..n_blocks-1) compiles to with these choices."""
    sp = get_space(space)
    return block_key(resolution, slot // sp.max_depth, slot % sp.max_depth == 0, kernel, expand)


def net_key(resolution: int, kernel: int, expand: int) -> str:
    return f"r{resolution}/net/k{kernel}-e{expand}"


def _checked(space: str | SearchSpace, resolutions: tuple[int, ...] | list[int]) -> SearchSpace:
    sp = get_space(space)
    bad = [r for r in resolutions if r not in sp.resolution_choices]
    if bad:
        from .errors import ConfigError

        raise ConfigError(f"resolutions: {bad[0]} is not a resolution of {sp.name}; allowed: "
                          f"{sp.resolution_choices[0]}..{sp.resolution_choices[-1]} in steps of "
                          f"{sp.resolution_choices[1] - sp.resolution_choices[0]}")
    return sp


def cover_nets(space: str | SearchSpace, resolutions: tuple[int, ...] | list[int]) -> list[Workload]:
    """Whole subnets that together hold every block variant, the stem and the head: 9 per resolution.

    What ``tune`` extracts its tasks from where modules compute in NHWC (CPUs). A module turns the
    layout at its input and output, so a block compiled on its own has a transpose at each edge,
    and its residual add meets the NCHW input: it runs after a transpose instead of inside the
    projection convolution, where a network fuses it. Its tasks are not the network's. A whole
    subnet's tasks are exactly those of every subnet: uniform subnets of the smallest depth (kernel
    x expand choices) contain each stage's first and later block of every variant, and the later
    blocks of a stage are all alike.
    """
    sp = _checked(space, resolutions)
    return [Workload(net_key(r, k, e), "net", r, (1, 3, r, r), kernel=k, expand=e)
            for r in resolutions for k in sp.kernel_choices for e in sp.expand_choices]


def space_workloads(space: str | SearchSpace, resolutions: tuple[int, ...] | list[int],
                    n_classes: int | None = None, layout: str = "NCHW") -> list[Workload]:
    """All distinct workloads of ``space`` at ``resolutions`` (stem, 90 blocks, head per resolution).

    ``layout``: the layout the target's modules compute in (``TargetSpec.data_layout``); the
    workloads' edges are in it, so each compiles to the kernels it runs inside a network.
    """
    from .targets import DATA_LAYOUTS

    if layout not in DATA_LAYOUTS:
        from .errors import ConfigError

        raise ConfigError(f"layout: {layout!r} is not a data layout; allowed: {', '.join(DATA_LAYOUTS)}")
    sp = _checked(space, resolutions)

    def shape(c: int, h: int, w: int) -> tuple[int, int, int, int]:
        return (1, h, w, c) if layout == "NHWC" else (1, c, h, w)

    out: list[Workload] = []
    for r in resolutions:
        # Input shapes come from the cost counter, the one place that knows the network's shapes.
        layers = {layer.name: layer for layer in count_costs(SubnetConfig.max(sp.name, r), n_classes).layers}
        out.append(Workload(f"r{r}/stem", "stem", r, (1, 3, r, r), layout=layout))
        for stage in range(sp.n_stages):
            for first in (True, False):
                slot = stage * sp.max_depth + (0 if first else 1)
                c, h, w = layers[f"blocks.{slot + 1}.expand"].in_shape
                for k in sp.kernel_choices:
                    for e in sp.expand_choices:
                        out.append(Workload(block_key(r, stage, first, k, e), "block", r, shape(c, h, w),
                                            stage, first, k, e, layout))
        c, h, w = layers["final_expand_layer"].in_shape
        out.append(Workload(f"r{r}/head", "head", r, shape(c, h, w), layout=layout))
    return out


class _Stem(nn.Module):
    def __init__(self, sp: SearchSpace) -> None:
        super().__init__()
        self.first_conv, self.first_block = build_stem(sp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.first_block(self.first_conv(x))


class _Head(nn.Module):
    def __init__(self, sp: SearchSpace, n_classes: int) -> None:
        super().__init__()
        self.final_expand_layer, self.feature_mix_layer, self.classifier = build_head(sp, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_head(self, x)


class _ChannelsLastEdges(nn.Module):
    """``inner`` (NCHW, as torch computes) seen from outside with channels-last tensors at the
    chosen edges: the input permuted in, a 4-D output permuted out."""

    def __init__(self, inner: nn.Module, nhwc_in: bool, nhwc_out: bool) -> None:
        super().__init__()
        self.inner, self.nhwc_in, self.nhwc_out = inner, nhwc_in, nhwc_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x.permute(0, 3, 1, 2) if self.nhwc_in else x)
        return y.permute(0, 2, 3, 1) if self.nhwc_out and y.dim() == 4 else y


def workload_module(w: Workload, space: str | SearchSpace, n_classes: int | None = None,
                    seed: int = 0) -> nn.Module:
    """The torch module of one workload, built from the same parts as a static subnet."""
    sp = get_space(space)
    torch.manual_seed(seed)
    if w.kind == "net":
        from .search_space import random_subnet

        cfg = SubnetConfig.uniform(w.kernel, w.expand, min(sp.depth_choices), w.resolution, sp.name)
        return random_subnet(cfg, seed=seed, n_classes=n_classes or sp.n_classes).eval()
    if w.kind == "stem":
        module: nn.Module = _Stem(sp)
    elif w.kind == "head":
        module = _Head(sp, n_classes or sp.n_classes)
    else:
        spec = sp.stages[w.stage]
        cin = sp.stage_in_channels(w.stage) if w.first else spec.out_channels
        mid = sp.mid_channels(cin, w.expand)
        se = sp.se_channels(mid) if spec.use_se else None
        stride = spec.stride if w.first else 1
        module = ResidualBlock(MBConv(cin, spec.out_channels, w.kernel, stride, mid, spec.act, se, sp.bn_eps))
    if w.layout == "NHWC":  # the stem takes the NCHW image, as a network does; the head gives logits
        module = _ChannelsLastEdges(module, nhwc_in=w.kind != "stem", nhwc_out=w.kind != "head")
    return module.eval()


def export_workloads(workloads: list[Workload], space: str | SearchSpace, n_classes: int | None = None,
                     cache_dir: str | Path | None = None, seed: int = 0) -> dict[str, Path]:
    """ONNX file per workload key, exported once into a content-hashed cache directory."""
    from .export import export_onnx

    sp = get_space(space)
    n_classes = n_classes or sp.n_classes
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "workloads"
    paths: dict[str, Path] = {}
    for w in workloads:
        ident = json.dumps({"w": w.to_dict(), "space": sp.name, "n_classes": n_classes, "seed": seed,
                            "torch": torch.__version__.split("+")[0]}, sort_keys=True)
        path = root / f"{w.key.replace('/', '_')}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.onnx"
        if not path.is_file():
            export_onnx(workload_module(w, sp, n_classes, seed), w.resolution, path, seed=seed,
                        input_shape=w.input_shape)
        paths[w.key] = path
    return paths
