"""Analytic cost counter: MACs, parameters, bytes moved and arithmetic intensity per layer.

Counted from the config alone (no torch), so search can cost tens of thousands of subnets a
second. Conventions:

* MACs follow the official OFA counter: convolutions and the classifier only (BN, activations,
  pooling, the SE multiply and residual adds count 0 MACs). ``ops = 2 * MACs``.
* Parameters are those of the trainable PyTorch module (BN gamma/beta included), so they equal
  ``sum(p.numel() for p in model.parameters())``.
* Bytes moved model the *deployed* graph as a compiler fuses it: BN folded into the conv
  (weight + one bias per output channel), the activation fused in, each fused layer reading its
  input once and writing its output once; the SE block reads its input twice (pool, scale) and
  writes it once; a residual add is fused into the projecting conv, which then reads the shortcut
  too. ``bytes(dtype_bytes)`` gives fp32 (4) or int8 (1) traffic.
* Arithmetic intensity = ops / bytes moved (ops per DRAM byte), the roofline x-axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .config import SubnetConfig
from .space import SearchSpace, get_space

Shape = tuple[int, int, int]  # (channels, height, width)


@dataclass(frozen=True)
class LayerCost:
    """One fused layer of the deployed graph."""

    name: str
    op: str  # "conv", "dwconv", "se", "pool", "linear"
    in_shape: Shape
    out_shape: Shape
    macs: int
    params: int  # trainable parameters (BN included)
    weight_elems: int  # deployed weights (BN folded into conv weight + bias)
    act_read: int  # activation elements read
    act_write: int  # activation elements written

    def bytes(self, dtype_bytes: int = 4) -> int:
        return (self.weight_elems + self.act_read + self.act_write) * dtype_bytes

    def intensity(self, dtype_bytes: int = 4) -> float:
        return 2 * self.macs / self.bytes(dtype_bytes)


@dataclass(frozen=True)
class NetworkCost:
    """Costs of a whole subnet at its resolution (batch 1)."""

    config: SubnetConfig
    layers: tuple[LayerCost, ...]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    def bytes(self, dtype_bytes: int = 4) -> int:
        return sum(layer.bytes(dtype_bytes) for layer in self.layers)

    def intensity(self, dtype_bytes: int = 4) -> float:
        return 2 * self.macs / self.bytes(dtype_bytes)

    def summary(self) -> dict[str, float | int | str]:
        """The headline numbers, JSON-ready."""
        return {
            "id": self.config.id,
            "image_size": self.config.image_size,
            "macs": self.macs,
            "params": self.params,
            "bytes_fp32": self.bytes(4),
            "bytes_int8": self.bytes(1),
            "intensity_fp32": round(self.intensity(4), 3),
            "intensity_int8": round(self.intensity(1), 3),
        }

    def table(self) -> str:
        """Per-layer text table followed by totals (for ``ofa-deploy info``)."""
        head = f"{'layer':<28}{'op':<8}{'in':>16}{'out':>16}{'MACs':>12}{'params':>10}{'B fp32':>12}{'ops/B':>8}"
        rows = [head, "-" * len(head)]
        for layer in self.layers:
            rows.append(
                f"{layer.name:<28}{layer.op:<8}{_shape(layer.in_shape):>16}{_shape(layer.out_shape):>16}"
                f"{layer.macs:>12,}{layer.params:>10,}{layer.bytes(4):>12,}{layer.intensity(4):>8.2f}"
            )
        rows.append("-" * len(head))
        rows += [
            f"subnet      {self.config.id}  ({self.config.space}, {self.config.image_size}x{self.config.image_size})",
            f"MACs        {self.macs / 1e6:.2f} M",
            f"params      {self.params / 1e6:.3f} M",
            f"bytes moved {self.bytes(4) / 2**20:.2f} MiB fp32, {self.bytes(1) / 2**20:.2f} MiB int8",
            f"intensity   {self.intensity(4):.2f} ops/byte fp32, {self.intensity(1):.2f} ops/byte int8",
        ]
        return "\n".join(rows)


def _shape(s: Shape) -> str:
    return "x".join(map(str, s))


def _out_hw(h: int, kernel: int, stride: int) -> int:
    return (h + 2 * (kernel // 2) - kernel) // stride + 1


def _conv(name: str, shape: Shape, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
          bn: bool = True, bias: bool = False, residual: bool = False) -> LayerCost:
    cin, h, w = shape
    ho, wo = _out_hw(h, kernel, stride), _out_hw(w, kernel, stride)
    weights = cout * (cin // groups) * kernel * kernel
    macs = weights * ho * wo
    params = weights + (2 * cout if bn else 0) + (cout if bias else 0)
    deployed = weights + (cout if (bn or bias) else 0)
    out = cout * ho * wo
    read = cin * h * w + (out if residual else 0)
    return LayerCost(name, "dwconv" if groups > 1 else "conv", shape, (cout, ho, wo), macs, params, deployed, read, out)


def _se(name: str, shape: Shape, hidden: int) -> LayerCost:
    c, h, w = shape
    weights = 2 * c * hidden
    return LayerCost(name, "se", shape, shape, weights, weights + hidden + c, weights + hidden + c,
                     2 * c * h * w, c * h * w)


@lru_cache(maxsize=None)
def _block(space: SearchSpace, name: str, shape: Shape, cout: int, kernel: int, stride: int, mid: int,
           se_hidden: int | None, residual: bool) -> tuple[LayerCost, ...]:
    """Layers of one MBConv block; cached because search costs the same blocks over and over."""
    layers = []
    if mid != shape[0]:
        layers.append(_conv(f"{name}.expand", shape, mid))
        shape = layers[-1].out_shape
    layers.append(_conv(f"{name}.dw{kernel}x{kernel}", shape, mid, kernel, stride, groups=mid))
    shape = layers[-1].out_shape
    if se_hidden is not None:
        layers.append(_se(f"{name}.se", shape, se_hidden))
    layers.append(_conv(f"{name}.project", shape, cout, residual=residual))
    return tuple(layers)


def count_costs(cfg: SubnetConfig, n_classes: int | None = None) -> NetworkCost:
    """Per-layer and total costs of ``cfg`` at ``cfg.image_size``, batch 1 (ImageNet head by default)."""
    sp = get_space(cfg.space)
    n_classes = n_classes or sp.n_classes
    r = cfg.image_size
    layers = [_conv("first_conv", (3, r, r), sp.stem_channels, 3, 2)]
    shape = layers[-1].out_shape
    layers += _block(sp, "blocks.0", shape, sp.first_block_channels, 3, 1, sp.stem_channels, None,
                     sp.stem_channels == sp.first_block_channels)
    shape = layers[-1].out_shape
    for i, b in enumerate(cfg.blocks(), start=1):
        mid = sp.mid_channels(b.in_channels, b.expand)
        se = sp.se_channels(mid) if b.use_se else None
        layers += _block(sp, f"blocks.{i}", shape, b.out_channels, b.kernel, b.stride, mid, se,
                         b.stride == 1 and b.in_channels == b.out_channels)
        shape = layers[-1].out_shape
    layers.append(_conv("final_expand_layer", shape, sp.final_expand_channels))
    c, h, w = layers[-1].out_shape
    layers.append(LayerCost("global_pool", "pool", (c, h, w), (c, 1, 1), 0, 0, 0, c * h * w, c))
    layers.append(_conv("feature_mix_layer", (c, 1, 1), sp.last_channels, bn=False))
    fc = sp.last_channels * n_classes
    layers.append(LayerCost("classifier", "linear", (sp.last_channels, 1, 1), (n_classes, 1, 1), fc,
                            fc + n_classes, fc + n_classes, sp.last_channels, n_classes))
    return NetworkCost(cfg, tuple(layers))
