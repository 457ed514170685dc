"""The pieces ``profile`` times compile to the kernels a network runs (TVM tier).

A latency table sums the timings of a stem, blocks and a head, each compiled on its own. That sum
describes a network only if each piece's fused functions are the network's. In NHWC (CPU targets)
a piece exported with NCHW edges is not: transposes at both ends, and a residual add outside the
projection convolution. So NHWC workloads have NHWC edges, and the build folds the permutes
that cancel (``_FoldTransposes``). Structure: every fused function of such a workload is one of its
cover net's, and the pass leaves a whole network's functions as they were. Numerics: the folded
module computes what PyTorch does.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tvm

SPACE = "ofa_mbv3_d234_e346_k357_w1.0"
RES = 128


def _prepared(w):
    import tvm

    from ofa_deploy.compile.worker import build
    from ofa_deploy.workloads import export_workloads

    path = export_workloads([w], SPACE)[w.key]
    target = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})
    return build.prepare(build.load_onnx(str(path), "input", list(w.input_shape)), target, "NHWC")


def _functions(mod) -> dict[int, str]:
    import tvm
    import tvm_ffi

    return {int(tvm_ffi.structural_hash(f)): gv.name_hint for gv, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc)}


def test_nhwc_workloads_compile_to_their_cover_nets_functions(monkeypatch):
    import tvm

    from ofa_deploy.compile.worker import build
    from ofa_deploy.workloads import cover_nets, space_workloads

    pieces = {w.key: w for w in space_workloads(SPACE, (RES,), layout="NHWC")}
    net = next(w for w in cover_nets(SPACE, (RES,)) if w.key.endswith("k5-e4"))
    in_net = _functions(_prepared(net))
    for key in (f"r{RES}/stem", f"r{RES}/s1-first/k5-e4", f"r{RES}/s3-later/k5-e4", f"r{RES}/head"):
        got = _functions(_prepared(pieces[key]))
        assert got, key
        missing = sorted(name for h, name in got.items() if h not in in_net)
        assert not missing, f"{key}: {missing} are not kernels of {net.key}"
        if pieces[key].kind == "block":  # (the stem and head turn the layout where the network does)
            assert not any("transpose" in name for name in got.values()), key  # nothing left of the edges

    identity = tvm.transform.module_pass(opt_level=0, name="Identity")(lambda mod, _ctx: mod)
    monkeypatch.setattr(build, "_fold_transposes", identity)
    assert _functions(_prepared(net)) == in_net  # a network has nothing to fold: its tuned tasks stay the same


def test_nchw_edges_leave_transposes_in_an_nhwc_block():
    """Why the edges matter: the same block exported NCHW is other kernels in an NHWC build."""
    from ofa_deploy.workloads import space_workloads

    key = f"r{RES}/s3-later/k5-e4"
    nchw = next(w for w in space_workloads(SPACE, (RES,)) if w.key == key)
    names = _functions(_prepared(nchw)).values()
    assert any("transpose" in n for n in names)


def test_folded_block_computes_what_torch_does():
    import torch
    import tvm
    from tvm import relax

    from ofa_deploy.export import seeded_input
    from ofa_deploy.workloads import space_workloads, workload_module

    w = next(w for w in space_workloads(SPACE, (RES,), layout="NHWC") if w.key == f"r{RES}/s3-later/k5-e4")
    mod = _prepared(w)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})
    with target:
        vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    x = seeded_input(w.input_shape)
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    with torch.no_grad():
        expected = workload_module(w, SPACE)(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape == w.input_shape  # a later block keeps its shape, channels last
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_fold_transposes_cancels_composes_and_sinks_through_elementwise():
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    from ofa_deploy.compile.worker.build import _fold_transposes

    @tvm.script.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((1, 4, 5, 3), "float32"), y: R.Tensor((1, 3, 4, 5), "float32")):
            with R.dataflow():
                a = R.permute_dims(x, axes=[0, 3, 1, 2])  # NHWC -> NCHW
                b = R.permute_dims(a, axes=[0, 2, 3, 1])  # and back: cancels
                c = R.permute_dims(a, axes=[0, 1, 3, 2])  # composes into one permute of x
                d = R.add(a, R.permute_dims(b, axes=[0, 3, 1, 2]))  # both operands permuted: sinks
                e = R.permute_dims(d, axes=[0, 2, 3, 1])
                f = R.permute_dims(R.add(a, y), axes=[0, 2, 3, 1])  # y is not a permute: left alone
                R.output(b, c, e, f)
            return (b, c, e, f)

    out = _fold_transposes(Mod)
    out = relax.transform.DeadCodeElimination()(relax.transform.CanonicalizeBindings()(out))
    text = out["main"].script()
    assert "return (x, c, e, f)" in text  # b is x itself
    assert text.count("R.permute_dims(x, axes=[0, 3, 2, 1])") == 1  # c: [0,3,1,2] then [0,1,3,2]

    rng = np.random.default_rng(0)
    xv, yv = rng.standard_normal((1, 4, 5, 3), dtype=np.float32), rng.standard_normal((1, 3, 4, 5), dtype=np.float32)
    target = tvm.target.Target({"kind": "llvm"})
    results = []
    for mod in (Mod, out):
        vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
        results.append([t.numpy() for t in vm["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(yv))])
    for before, after in zip(*results):
        np.testing.assert_array_equal(before, after)
    assert "R.add(x, x)" in text  # e: add(permute(a), permute(permute(b))) folded to x + x, no permute left
    assert "R.add(a, y)" in text  # f: y is not a permute, so the add stays in NCHW and f keeps its permute
