"""OFA's architecture encoding for the accuracy predictor, vectorised over gene arrays.

Same features, in the same order, as ``MobileNetArchEncoder.arch2feature`` of the official
once-for-all code, so a predictor trained there could be loaded here (and vice versa):

    [one-hot resolution (25) | per block slot one-hot kernel (3) | per block slot one-hot expand (3)]

Skipped block slots (beyond their stage's depth) are all zeros, so depth is encoded implicitly.
For the MobileNetV3 spaces that is 25 + 20*3 + 20*3 = 145 features.
"""

from __future__ import annotations

import numpy as np

from ofa_deploy.search_space import SearchSpace, SubnetConfig, get_space
from ofa_deploy.search_space.genes import configs_to_genes, layout

# Bump when the feature layout changes: predictors store it and refuse a different one.
ENCODING_VERSION = 1


def n_features(space: str | SearchSpace) -> int:
    sp = get_space(space)
    return len(sp.resolution_choices) + sp.n_blocks * (len(sp.kernel_choices) + len(sp.expand_choices))


def encode(genes: np.ndarray, space: str | SearchSpace) -> np.ndarray:
    """(N, n_genes) gene indices -> (N, n_features) float32 OFA features."""
    sp = get_space(space)
    lay = layout(sp)
    genes = np.asarray(genes, dtype=np.int64)
    n = len(genes)
    nr, nk, ne, nb = len(sp.resolution_choices), len(sp.kernel_choices), len(sp.expand_choices), sp.n_blocks
    out = np.zeros((n, n_features(sp)), dtype=np.float32)
    rows = np.arange(n)
    out[rows, genes[:, lay.r]] = 1.0
    active = lay.active(genes)
    slot = np.arange(nb)
    k_col = nr + slot[None, :] * nk + genes[:, lay.ks]
    e_col = nr + nb * nk + slot[None, :] * ne + genes[:, lay.e]
    r_idx, s_idx = np.nonzero(active)
    out[r_idx, k_col[r_idx, s_idx]] = 1.0
    out[r_idx, e_col[r_idx, s_idx]] = 1.0
    return out


def encode_configs(configs: list[SubnetConfig], space: str | SearchSpace | None = None) -> np.ndarray:
    """Convenience: encode ``SubnetConfig`` objects."""
    sp = get_space(space or configs[0].space)
    return encode(configs_to_genes(configs, sp), sp)
