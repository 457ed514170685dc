"""No emitted kernel is naive loops: where a build's schedules come from, and that each source computes the same net.

Structure (which source scheduled how many functions) and numerics (the module equals ONNX
Runtime) for the three ways a function is scheduled without this device's own tuning: another
device's record of the same workload, a structural sibling's re-fitted record, and the rule.
"""

from __future__ import annotations

import numpy as np
import pytest

from ofa_deploy.search_space import SubnetConfig, random_subnet

pytestmark = pytest.mark.tvm


def test_fit_tile_keeps_the_product_and_the_inner_blocking():
    from ofa_deploy.compile.worker.schedules import fit_tile

    assert fit_tile(112, [2, 7, 1, 8]) == [2, 7, 1, 8]  # the sibling's own extent: unchanged
    for extent, decision in [(96, [2, 7, 1, 8]), (56, [1, 4, 2, 16]), (7, [1, 2, 2, 4]), (1280, [5, 4, 4, 16])]:
        fitted = fit_tile(extent, decision)
        assert np.prod(fitted) == extent and len(fitted) == len(decision)
    assert fit_tile(96, [2, 7, 1, 8])[-1] == 8  # the vector width survives where it divides


def test_sibling_index_ignores_input_names_and_ranks_nearest_shape():
    from ofa_deploy.compile.worker.schedules import shape_distance

    assert shape_distance([1, 96, 56, 56], [1, 96, 56, 56]) == 0
    assert shape_distance([1, 96, 48, 48], [1, 96, 56, 56]) < shape_distance([1, 96, 28, 28], [1, 96, 56, 56])
    assert shape_distance([1, 96, 56], [1, 96, 56, 56]) == float("inf")


SHIPPED = "x86_64-znver4-2c"  # the shipped NHWC database (r224), standing in for another device's


@pytest.mark.parametrize("resolution, transfer, expected", [
    (128, False, "default"),  # no database anywhere: the rule schedules every function
    (224, True, "transferred"),  # the shipped database tuned r224: same workloads
    (192, True, "sibling"),  # r192 was never tuned: siblings at 224, re-fitted
])
def test_every_function_is_scheduled_and_computes_the_same_net(resolution, transfer, expected, tmp_path, monkeypatch):
    import onnxruntime as ort

    from ofa_deploy.compile import build_module, run_local
    from ofa_deploy.export import INPUT_NAME, export_onnx, seeded_input
    from ofa_deploy.tuning_logs.database import resolve_database
    from ofa_deploy.tuning_logs.layout import REPO_TUNING_LOGS

    monkeypatch.setenv("OFA_DEPLOY_TUNING_LOGS", str(tmp_path / "empty"))  # no database of this device
    cfg = SubnetConfig.uniform(3, 3, 2, resolution)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(random_subnet(cfg, seed=0, n_classes=10), resolution, onnx_path)
    shipped = [(SHIPPED, resolve_database(REPO_TUNING_LOGS / SHIPPED))] if transfer else []
    shape = (1, 3, resolution, resolution)
    info = build_module(onnx_path, "x86-host", tmp_path / "m.so", input_name=INPUT_NAME, input_shape=shape,
                        transfer_databases=shipped)
    sources = info.schedule_sources
    assert sum(sources.values()) == info.total_funcs > 20
    assert sources["unscheduled"] == 0 and sources["tuned"] == 0
    assert sources[expected] >= info.total_funcs // 2, sources
    assert info.transferred_from == ((SHIPPED,) if transfer else ())
    assert info.data_layout == "NHWC"
    x = seeded_input(shape)
    expected_out = ort.InferenceSession(str(onnx_path)).run(None, {INPUT_NAME: x})[0]
    got = run_local(info.so_path, x)
    assert np.abs(got - expected_out).max() <= 1e-4 * np.abs(expected_out).max()


def test_a_seed_whose_record_would_not_load_back_is_dropped():
    """The database replays every stored trace against its workload when it loads, and one line that fails
    there made the whole database unloadable (seen: a sibling's trace naming a block, ``compute``, that the
    task calls otherwise). A seed is kept only if its record loads back as a record of the task."""
    import tvm
    from tvm import s_tir, te

    from ofa_deploy.compile.worker.seeds import loads_back

    def func(block_name: str) -> tvm.IRModule:
        a = te.placeholder((64, 64), name="a")
        b = te.compute((64, 64), lambda i, j: a[i, j] * 2.0, name=block_name)
        return tvm.IRModule({"main": te.create_prim_func([a, b])})

    task, other = func("b"), func("compute")
    sch = s_tir.Schedule(task)
    loop = sch.get_loops(sch.get_sblock("b"))[1]
    sch.split(loop, sch.sample_perfect_tile(loop, n=2, max_innermost_factor=8))
    assert loads_back(sch, task)
    assert not loads_back(sch, other)  # GetSBlock("b") finds nothing there
