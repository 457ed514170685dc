"""The OFA MobileNetV3 search spaces (Cai et al., ICLR 2020), as data.

A space fixes the macro-architecture (channel widths, strides, activations, SE placement) and the
elastic choices (kernel size, expand ratio and depth per stage, input resolution). Everything else
(the supernet, the static subnets, the cost counter, the samplers) reads it from here, so there is
one place that says what ``ofa_mbv3_d234_e346_k357_w1.0`` means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ofa_deploy.errors import ConfigError, shown

DEFAULT_SPACE = "ofa_mbv3_d234_e346_k357_w1.0"


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without going below 90 % of it.

    This is the MobileNet rounding rule; the official OFA code uses it for every channel count, so
    we must too or checkpoint shapes would not match.
    """
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


@dataclass(frozen=True)
class StageSpec:
    """One elastic stage: up to ``max_depth`` MBConv blocks with the same output width."""

    out_channels: int
    stride: int  # stride of the stage's first block; the others use 1
    act: str  # "relu" or "h_swish"
    use_se: bool  # squeeze-and-excite after the depthwise conv


@dataclass(frozen=True)
class SearchSpace:
    """An OFA MobileNetV3 space: macro-architecture plus elastic choices."""

    name: str
    width_mult: float = 1.0
    kernel_choices: tuple[int, ...] = (3, 5, 7)
    expand_choices: tuple[int, ...] = (3, 4, 6)
    depth_choices: tuple[int, ...] = (2, 3, 4)
    resolution_choices: tuple[int, ...] = tuple(range(128, 225, 4))  # 128..224 step 4
    n_classes: int = 1000
    # Base widths of MobileNetV3-Large: stem, first block, 5 stages, final expand, feature mix.
    base_widths: tuple[int, ...] = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
    stage_strides: tuple[int, ...] = (2, 2, 2, 1, 2)
    stage_acts: tuple[str, ...] = ("relu", "relu", "h_swish", "h_swish", "h_swish")
    stage_se: tuple[bool, ...] = (False, True, False, True, True)
    stem_head_act: str = "h_swish"  # first conv, final expand and feature mix
    se_reduction: int = 4
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    dropout: float = 0.1
    stages: tuple[StageSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        widths = [make_divisible(w * self.width_mult) for w in self.base_widths]
        stages = tuple(
            StageSpec(widths[2 + i], self.stage_strides[i], self.stage_acts[i], self.stage_se[i])
            for i in range(len(self.stage_strides))
        )
        object.__setattr__(self, "stages", stages)

    # -- derived widths -------------------------------------------------------------------------
    @property
    def stem_channels(self) -> int:
        return make_divisible(self.base_widths[0] * self.width_mult)

    @property
    def first_block_channels(self) -> int:
        return make_divisible(self.base_widths[1] * self.width_mult)

    @property
    def final_expand_channels(self) -> int:
        return make_divisible(self.base_widths[-2] * self.width_mult)

    @property
    def last_channels(self) -> int:
        return make_divisible(self.base_widths[-1] * self.width_mult)

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    @property
    def max_depth(self) -> int:
        return max(self.depth_choices)

    @property
    def n_blocks(self) -> int:
        """Number of elastic block slots (``len(ks)`` of a subnet config)."""
        return self.n_stages * self.max_depth

    def stage_in_channels(self, stage: int) -> int:
        return self.first_block_channels if stage == 0 else self.stages[stage - 1].out_channels

    def mid_channels(self, in_channels: int, expand: int) -> int:
        """Hidden width of an MBConv block (the official rounding of ``in * expand``)."""
        return make_divisible(round(in_channels * expand))

    def se_channels(self, channels: int) -> int:
        """Hidden width of the squeeze-and-excite bottleneck for ``channels`` inputs."""
        return make_divisible(channels // self.se_reduction)

    # -- size -----------------------------------------------------------------------------------
    def n_architectures(self) -> int:
        """Distinct networks ignoring resolution (skipped blocks' genes do not count)."""
        per_block = len(self.kernel_choices) * len(self.expand_choices)
        per_stage = sum(per_block**d for d in self.depth_choices)
        return per_stage**self.n_stages

    def describe(self) -> str:
        """A few human lines: what the space is and how big."""
        n = self.n_architectures()
        r = self.resolution_choices
        return "\n".join(
            [
                f"space        {self.name}",
                f"stages       {self.n_stages} x up to {self.max_depth} MBConv blocks "
                f"({self.n_blocks} block slots)",
                f"kernel       {list(self.kernel_choices)}",
                f"expand       {list(self.expand_choices)}",
                f"depth        {list(self.depth_choices)} per stage",
                f"resolution   {r[0]}..{r[-1]} step {r[1] - r[0]} ({len(r)} values)",
                f"widths       stem {self.stem_channels}, stages "
                f"{[s.out_channels for s in self.stages]}, head "
                f"{self.final_expand_channels}/{self.last_channels}",
                f"architectures {n:.3e} (x {len(r)} resolutions = {n * len(r):.3e} subnets)",
            ]
        )


# -- registry (timm style: one dict, a decorator-free factory, names listed in errors) ----------
_SPACES: dict[str, Callable[[], SearchSpace]] = {
    "ofa_mbv3_d234_e346_k357_w1.0": lambda: SearchSpace("ofa_mbv3_d234_e346_k357_w1.0", 1.0),
    "ofa_mbv3_d234_e346_k357_w1.2": lambda: SearchSpace("ofa_mbv3_d234_e346_k357_w1.2", 1.2),
    # The same macro-architecture with only the operators an int8 accelerator runs: ReLU everywhere,
    # no squeeze-and-excite. VTA (and Xilinx's DPU, which the OFA paper's FPGA results used and which
    # did not support MobileNetV3) leaves h-swish and SE to the ARM cores; a network for such a board
    # is searched in this space. Not in the official model zoo: train it with `ofa-deploy train --space`.
    "ofa_mbv3_relu_nose_d234_e346_k357_w1.0": lambda: SearchSpace(
        "ofa_mbv3_relu_nose_d234_e346_k357_w1.0", 1.0, stage_acts=("relu",) * 5, stage_se=(False,) * 5,
        stem_head_act="relu"),
}


def list_spaces() -> list[str]:
    return sorted(_SPACES)


def get_space(name: str | SearchSpace = DEFAULT_SPACE) -> SearchSpace:
    """Return the space called ``name`` (a :class:`SearchSpace` passes through)."""
    if isinstance(name, SearchSpace):
        return name
    if not isinstance(name, str) or name not in _SPACES:
        raise ConfigError(f"space: unknown search space {shown(name)}; allowed: {', '.join(list_spaces())}")
    return _SPACES[name]()


