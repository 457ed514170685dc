"""The end-to-end correction (``latency.calibration``): the line, the stage and resolution terms, and their tables.

No TVM: synthetic tables and "measured" latencies with known per-stage scales. The terms must be found
when they are there, left out when they are not, and their corrected tables must predict exactly what
the fitted formula says, so search's lookups and its exact fastest subnet stay right.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ofa_deploy.latency.calibration import TERMS_MIN_POINTS, Calibration
from ofa_deploy.latency.measured import MeasuredLatencyModel
from ofa_deploy.latency.tables import lookup, stage_sums
from ofa_deploy.search_space import get_space
from ofa_deploy.search_space.genes import random_genes, resolution_indices

SPACE = "ofa_mbv3_d234_e346_k357_w1.0"
RES = (192, 224)
TRUE_SCALES = np.array([1.25, 0.9, 1.1, 0.8, 1.05])


def tables(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded block tables growing with kernel, expand and resolution, +inf outside RES (as a profiled model's)."""
    sp = get_space(SPACE)
    rng = np.random.default_rng(seed)
    table = np.full((sp.n_blocks, 3, 3, len(sp.resolution_choices)), np.inf)
    fixed = np.full(len(sp.resolution_choices), np.inf)
    for r in resolution_indices(sp, RES):
        size = (sp.resolution_choices[r] / 224) ** 2
        base = rng.uniform(0.05, 0.3, sp.n_blocks)[:, None, None]
        table[..., r] = base * size * np.array([1.0, 1.3, 1.7])[:, None] * np.array([1.0, 1.3, 1.9])[None, :]
        fixed[r] = 0.4 * size
    return table, fixed


def truth(genes: np.ndarray, table: np.ndarray, fixed: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """"Measured" latencies: stages scaled by TRUE_SCALES, 224 px 0.05 ms slower, times seeded noise."""
    sp = get_space(SPACE)
    s = stage_sums(genes, table, sp)
    r = np.array(sp.resolution_choices)[genes[:, -1]]
    y = 1.3 * (fixed[genes[:, -1]] + s @ TRUE_SCALES) + 0.2 + 0.05 * (r == 224)
    return y * (1 + noise * np.random.default_rng(seed).standard_normal(len(y)))


def sample(n: int, seed: int) -> np.ndarray:
    sp = get_space(SPACE)
    return random_genes(np.random.default_rng(seed), n, sp, r_choices=resolution_indices(sp, RES))


def fitted(genes: np.ndarray, y: np.ndarray, table: np.ndarray, fixed: np.ndarray) -> Calibration:
    sp = get_space(SPACE)
    return Calibration.fit(lookup(genes, table, fixed, sp), y, stage_sums(genes, table, sp),
                           np.array(sp.resolution_choices)[genes[:, -1]])


def test_stage_sums_add_up_to_the_lookup_without_its_fixed_part():
    table, fixed = tables()
    genes = sample(200, 1)
    s = stage_sums(genes, table, SPACE)
    assert s.shape == (200, 5) and (s > 0).all()
    assert fixed[genes[:, -1]] + s.sum(axis=1) == pytest.approx(lookup(genes, table, fixed, SPACE), rel=1e-12)


def test_the_terms_are_found_when_the_stages_scale_differently():
    table, fixed = tables()
    genes = sample(50, 2)
    cal = fitted(genes, truth(genes, table, fixed, 0.003, 3), table, fixed)
    assert cal.stage_scale is not None and cal.ridge is not None
    assert np.array(cal.stage_scale) / cal.stage_scale[0] == pytest.approx(TRUE_SCALES / TRUE_SCALES[0], rel=0.05)
    assert cal.loo_rms_pct < cal.affine_loo_rms_pct / 2  # the terms predict left-out subnets far better
    unseen = sample(400, 4)
    y = truth(unseen, table, fixed, 0.0, 5)
    line = Calibration.fit(lookup(genes, table, fixed, SPACE), truth(genes, table, fixed, 0.003, 3))
    err_terms = np.abs(MeasuredLatencyModel(SPACE, table, fixed, cal, target="x86-host", resolutions=RES,
                                            basis="test").predict(unseen) / y - 1)
    err_line = np.abs((line.a * lookup(unseen, table, fixed, SPACE) + line.b) / y - 1)
    assert line.stage_scale is None and err_terms.mean() < err_line.mean() / 2


def test_the_line_stays_below_the_minimum_and_where_the_terms_do_not_help():
    table, fixed = tables()
    genes = sample(TERMS_MIN_POINTS - 1, 2)
    assert fitted(genes, truth(genes, table, fixed, 0.003, 3), table, fixed).stage_scale is None
    # a network that is the affine line of its blocks, timed with 3 % noise: leave-one-out finds nothing to add
    genes = sample(40, 6)
    y = (1.3 * lookup(genes, table, fixed, SPACE) + 0.2) * (1 + 0.03 * np.random.default_rng(7).standard_normal(40))
    cal = fitted(genes, y, table, fixed)
    assert cal.stage_scale is None or cal.loo_rms_pct < cal.affine_loo_rms_pct
    kept = sum(fitted(g, (1.3 * lookup(g, table, fixed, SPACE) + 0.2)
                      * (1 + 0.03 * np.random.default_rng(s).standard_normal(40)), table, fixed).stage_scale is None
               for s, g in ((s, sample(40, 100 + s)) for s in range(6)))
    assert kept >= 4  # most seeds keep the plain line


def test_a_stage_never_gets_a_negative_scale():
    """Points that would want a stage's bigger blocks to make the network faster: that term is refused."""
    table, fixed = tables()
    genes = sample(40, 8)
    s = stage_sums(genes, table, SPACE)
    y = 1.0 * (fixed[genes[:, -1]] + s[:, :4].sum(axis=1)) - 3.0 * s[:, 4] + 40.0
    cal = fitted(genes, y, table, fixed)
    assert cal.a > 0 and (cal.stage_scale is None or min(cal.stage_scale) > 0)


def test_corrected_tables_predict_the_formula_and_keep_the_exact_fastest(tmp_path):
    table, fixed = tables()
    sp = get_space(SPACE)
    genes = sample(50, 2)
    cal = fitted(genes, truth(genes, table, fixed, 0.003, 3), table, fixed)
    assert cal.stage_scale is not None
    unseen = sample(500, 9)
    r = np.array(sp.resolution_choices)[unseen[:, -1]]
    by_formula = cal.predict_sums(lookup(unseen, table, fixed, sp), stage_sums(unseen, table, sp), r)
    model = MeasuredLatencyModel(sp, table, fixed, cal, target="x86-host", resolutions=RES, basis="test")
    assert model.predict(unseen) == pytest.approx(by_formula, rel=1e-12)
    best, row = model.fastest()
    assert best == pytest.approx(float(model.predict(row[None])[0]), rel=1e-12)
    assert best <= model.predict(unseen).min() + 1e-12  # exact: no sampled subnet beats it
    # outside the profiled resolutions: never fast
    other = random_genes(np.random.default_rng(0), 5, sp, r_choices=resolution_indices(sp, (160,)))
    assert np.isinf(model.predict(other)).all()
    # a model file's calibration round-trips through JSON, terms included
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    line = Calibration.fit(np.array([1.0, 2.0, 3.0]), np.array([2.1, 3.9, 6.2]))
    assert Calibration.from_dict(json.loads(json.dumps(line.to_dict()))) == line
    old = {"a": 1.1, "b": 0.2, "n": 12, "rms_pct": 2.4, "max_pct": 5.0}  # a file from before the terms
    assert Calibration.from_dict(old) == Calibration(1.1, 0.2, 12, 2.4, 5.0)
    assert math.isnan(Calibration.from_dict(old).loo_rms_pct)
    assert "stages scaled" in cal.describe() and "stages" not in line.describe()
    with pytest.raises(ValueError, match="stage sums"):
        cal.predict_sums(np.array([1.0]))
