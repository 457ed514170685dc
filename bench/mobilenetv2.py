"""MobileNetV2 (Sandler et al., 2018) as a list of fused layers in ``count_costs``' LayerCost form.

The hand-designed baseline for the FPGA-vs-CPU comparison (``fpga_vs_cpu.py``): costed with exactly the conventions
of :mod:`ofa_deploy.search_space.costs` (BN folded, activation fused, residual add fused into the
projection), so its intensity and modelled latency compare like for like with OFA subnets.
Width 1.0 at 224 px: 300.8 M MACs and 3,504,872 parameters (torchvision's figures).
"""

from __future__ import annotations

from ofa_deploy.search_space import make_divisible
from ofa_deploy.search_space.costs import LayerCost

Shape = tuple[int, int, int]

# (expand t, output channels c, repeats n, first stride s), from the paper's Table 2.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv(name: str, shape: Shape, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
          residual: bool = False) -> LayerCost:
    """conv + BN (folded at deployment), like count_costs' convs."""
    cin, h, w = shape
    pad = kernel // 2
    ho, wo = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
    weights = cout * (cin // groups) * kernel * kernel
    out = cout * ho * wo
    return LayerCost(name, "dwconv" if groups > 1 else "conv", shape, (cout, ho, wo), weights * ho * wo,
                     weights + 2 * cout, weights + cout, cin * h * w + (out if residual else 0), out)


def mobilenet_v2_layers(image_size: int = 224, width_mult: float = 1.0,
                        n_classes: int = 1000) -> list[tuple[LayerCost, str | None]]:
    """(layer, fused activation) pairs, as :func:`ofa_deploy.latency.tables.layers_with_acts` returns for OFA subnets."""
    layers: list[tuple[LayerCost, str | None]] = []
    cin = make_divisible(32 * width_mult)
    layers.append((_conv("features.0", (3, image_size, image_size), cin, 3, 2), "relu6"))
    shape = layers[-1][0].out_shape
    i = 1
    for t, c, n, s in SETTINGS:
        cout = make_divisible(c * width_mult)
        for j in range(n):
            stride = s if j == 0 else 1
            hidden = cin * t
            if t != 1:
                layers.append((_conv(f"features.{i}.expand", shape, hidden), "relu6"))
                shape = layers[-1][0].out_shape
            layers.append((_conv(f"features.{i}.dw3x3", shape, hidden, 3, stride, groups=hidden), "relu6"))
            shape = layers[-1][0].out_shape
            layers.append((_conv(f"features.{i}.project", shape, cout, residual=stride == 1 and cin == cout), None))
            shape = layers[-1][0].out_shape
            cin = cout
            i += 1
    last = make_divisible(1280 * max(1.0, width_mult))
    layers.append((_conv("features.18", shape, last), "relu6"))
    c, h, w = layers[-1][0].out_shape
    layers.append((LayerCost("global_pool", "pool", (c, h, w), (c, 1, 1), 0, 0, 0, c * h * w, c), None))
    fc = last * n_classes
    layers.append((LayerCost("classifier", "linear", (last, 1, 1), (n_classes, 1, 1), fc, fc + n_classes,
                             fc + n_classes, last, n_classes), None))
    return layers
