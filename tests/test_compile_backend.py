"""ONNX -> TVM -> .so for every backend kind, checked against ONNX Runtime.

A tiny seeded MobileNetV3-style CNN (conv+BN+hardswish, depthwise, SE, linear) is built for
x86 (run here), aarch64 (run under qemu with the C++ deploy app) and CUDA (nvcc-compiled
kernels embedded; run only where a GPU exists). Tests marked ``tvm`` compile with TVM in a
worker process; the others test the plumbing without TVM.

Run as ``python -m tests.test_compile_backend REQUEST.json`` this file stands in for the TVM
worker to test crash isolation (see the bottom).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ofa_deploy.errors import OfaDeployError

REPO = Path(__file__).resolve().parents[1]
INPUT_SHAPE = (1, 3, 32, 32)


def _tiny_cnn():
    import torch
    from torch import nn

    class SqueezeExcite(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.reduce, self.expand = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)
            self.act, self.gate = nn.ReLU(), nn.Hardsigmoid()

        def forward(self, x):
            return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))

    def conv_bn(cin, cout, k, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, *([nn.Hardswish()] if act else []))

    torch.manual_seed(0)
    model = nn.Sequential(
        conv_bn(3, 16, 3, stride=2), conv_bn(16, 16, 3, groups=16), SqueezeExcite(16),
        conv_bn(16, 24, 1, act=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)).eval()
    for m in model.modules():  # non-trivial BN statistics, so folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(onnx path, input, ONNX Runtime output)."""
    import onnxruntime as ort
    import torch

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    torch.onnx.export(_tiny_cnn(), (torch.from_numpy(x),), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return path, x, ref


def assert_matches(actual: np.ndarray, ref: np.ndarray) -> None:
    """Within 1e-3 relative to the output's scale (plus elementwise rtol 1e-3)."""
    assert actual.shape == ref.shape
    np.testing.assert_allclose(actual, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()))


@pytest.fixture(scope="module")
def x86_module(tiny, tmp_path_factory):
    from ofa_deploy.compile import build_module
    from ofa_deploy.targets import get_target

    onnx_path, _, _ = tiny
    out = tmp_path_factory.mktemp("x86") / "tiny_x86.so"
    return build_module(onnx_path, get_target("x86-host"), out, input_name="input", input_shape=INPUT_SHAPE)


# --- x86: build, run, time --------------------------------------------------------------------

@pytest.mark.tvm
def test_x86_module_matches_onnxruntime(tiny, x86_module):
    from ofa_deploy.compile import elf_machine, run_local

    _, x, ref = tiny
    info = x86_module
    assert Path(info.so_path).is_file() and elf_machine(info.so_path) == "x86_64"
    assert info.target_name == "x86-host" and info.tvm_target["kind"] == "llvm"
    assert info.tvm_version.startswith("0.27") and info.build_seconds > 0
    assert info.database_hash is None and not info.tuned_records_applied and info.total_funcs > 0
    assert info.input_shape == INPUT_SHAPE and len(info.onnx_sha256) == 64
    json.dumps(info.to_dict())
    assert_matches(run_local(info.so_path, x), ref)


@pytest.mark.tvm
def test_time_local_reports_measured_latency(tiny, x86_module):
    from ofa_deploy.compile import time_local

    m = time_local(x86_module.so_path, tiny[1], repeat=5, number=2, num_threads=1)
    # the samples the speed probe called steady (at least a third), with their median reading
    assert m.source == "measured" and 2 <= m.n <= 5 and m.runs_per_sample == 2 and m.probe_us > 0
    assert 0 < m.median_ms < 1000 and m.std_ms >= 0 and "1 threads" in m.device


@pytest.mark.tvm
def test_time_local_uses_every_core_by_default(tiny, x86_module, monkeypatch):
    """TVM alone would take half the logical CPUs on x86 (one thread on a 2-core VM); we pin all usable cores."""
    from ofa_deploy.compile import time_local
    from ofa_deploy.compile.isolate import usable_cores

    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    m = time_local(x86_module.so_path, tiny[1], repeat=2, number=1)
    assert f"({usable_cores()} threads)" in m.device  # as reported by TVM's pool inside the worker


@pytest.mark.tvm
def test_time_interleaved_calls_each_module_in_turns(tiny, x86_module, tmp_path):
    """Two modules (here the same one twice, and a copy) in one process: one sample per call, per module."""
    import shutil

    from ofa_deploy.compile import time_interleaved

    copy = shutil.copy(x86_module.so_path, tmp_path / "copy.so")
    a, b = time_interleaved([x86_module.so_path, copy], tiny[1], calls=7, warmup=1, num_threads=1)
    assert len(a) == len(b) == 7 and all(0 < ms < 1000 for ms in a + b)
    a, b = time_interleaved([x86_module.so_path, copy], [tiny[1], tiny[1] * 2], calls=2, warmup=0)  # one input each
    assert len(a) == len(b) == 2
    with pytest.raises(OfaDeployError, match="one input for all modules or one per module"):
        time_interleaved([x86_module.so_path, copy], [tiny[1]], calls=2)
    with pytest.raises(OfaDeployError, match="calls >= 1"):
        time_interleaved([copy], tiny[1], calls=0)
    with pytest.raises(OfaDeployError, match="module not found"):
        time_interleaved([tmp_path / "missing.so"], tiny[1])


@pytest.mark.tvm
def test_the_worker_times_modules_of_different_inputs_in_turns_with_samples_of_many_calls(tiny, x86_module,
                                                                                        tmp_path):
    """Worker op ``time_interleaved`` with one input per module and ``min_sample_ms``: a sample is the mean of
    enough calls to last that long (``numbers``), ``calls x block`` samples each, a progress byte a turn."""
    from ofa_deploy.compile.worker.run import time_interleaved

    x = tmp_path / "x.npy"
    np.save(x, tiny[1])
    done = tmp_path / "turns_done"
    reply = time_interleaved({"so_paths": [x86_module.so_path] * 2, "input_paths": [str(x)] * 2, "calls": 4,
                              "warmup": 1, "block": 2, "settle": 1, "min_sample_ms": 5.0, "progress_path": str(done)})
    assert [len(s) for s in reply["samples_ms"]] == [8, 8] and done.read_bytes() == b"...."  # a byte a turn
    assert all(n * float(np.median(s)) >= 2.5 for n, s in zip(reply["numbers"], reply["samples_ms"]))  # ~5 ms each


@pytest.mark.tvm
def test_time_interleaved_times_onnxruntime_in_the_same_turns(tiny, x86_module, tmp_path):
    """ORT joins the turns as one more entry, after the modules; ``block`` calls per entry and turn."""
    from ofa_deploy.compile import time_interleaved, turn_ratio

    onnx_path, x, _ = tiny
    tvm_ms, ort_ms = time_interleaved([x86_module.so_path], x, onnx_paths=[onnx_path], calls=4, block=3, settle=2,
                                      warmup=1, num_threads=1)
    assert len(tvm_ms) == len(ort_ms) == 12 and all(0 < ms < 1000 for ms in tvm_ms + ort_ms)  # settling is untimed
    assert turn_ratio(tvm_ms, ort_ms) > 0
    with pytest.raises(OfaDeployError, match="ONNX model not found"):
        time_interleaved([x86_module.so_path], x, onnx_paths=[tmp_path / "missing.onnx"])
    with pytest.raises(OfaDeployError, match="block >= 1"):
        time_interleaved([x86_module.so_path], x, block=0)
    with pytest.raises(OfaDeployError, match="settle >= 0"):
        time_interleaved([x86_module.so_path], x, settle=-1)


def test_turn_ratio_pairs_samples_of_the_same_turn():
    """The median of per-turn ratios, not the ratio of medians: a slow turn slows both sides of its pair."""
    from ofa_deploy.compile import turn_ratio

    a, b = [2.0, 4.0, 20.0], [1.0, 2.0, 10.0]  # every turn: a is twice b, the machine slowed 5x in turn 3
    assert turn_ratio(a, b) == 2.0
    assert turn_ratio([3.0, 1.0, 1.0], [1.0, 1.0, 1.0]) == 1.0  # one outlier turn does not move the median
    with pytest.raises(OfaDeployError, match="equally long"):
        turn_ratio([1.0], [1.0, 2.0])
    with pytest.raises(OfaDeployError, match="non-empty"):
        turn_ratio([], [])


def test_tvm_threads_precedence(monkeypatch):
    from ofa_deploy.compile.isolate import tvm_threads, usable_cores

    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    assert tvm_threads() == usable_cores() >= 1
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert tvm_threads() == 3 and tvm_threads(5) == 5
    monkeypatch.setenv("TVM_NUM_THREADS", "many")  # not a count: ignored
    assert tvm_threads() == usable_cores()


@pytest.mark.tvm
def test_native_deploy_app_runs_x86_module(tiny, x86_module, tmp_path):
    """The C++ app (Makefile 'native') loads the .so with the TVM runtime alone."""
    _, x, ref = tiny
    build = tmp_path / "build"
    subprocess.run(["make", "-s", "-C", str(REPO / "examples" / "deploy_cpp"), "native", f"BUILD={build}",
                    f"PYTHON={sys.executable}"], check=True, capture_output=True)
    x.astype("<f4").tofile(tmp_path / "in.f32")
    app = build / "native" / "deploy_app"
    proc = subprocess.run([str(app), x86_module.so_path, "--input", str(tmp_path / "in.f32"),
                           "--shape", ",".join(map(str, INPUT_SHAPE)), "--output", str(tmp_path / "out.f32"),
                           "--repeat", "3"], check=True, capture_output=True, text=True)
    assert "output shape: 1x10" in proc.stdout and "top-5 (batch 0):" in proc.stdout
    assert "latency (app wall-clock" in proc.stdout
    assert_matches(np.fromfile(tmp_path / "out.f32", dtype="<f4").reshape(ref.shape), ref)
    assert f"class {int(ref.argmax()):5d}" in proc.stdout.split("#1")[1].splitlines()[0]


# --- aarch64: cross-compile, run under qemu -----------------------------------------------------

@pytest.mark.tvm
def test_aarch64_module_matches_onnxruntime_under_qemu(tiny, tmp_path):
    from ofa_deploy.compile import build_module, elf_machine, run_emulated_aarch64, run_local

    onnx_path, x, ref = tiny
    info = build_module(onnx_path, "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon",
                        tmp_path / "tiny_a76.so", input_name="input", input_shape=INPUT_SHAPE)
    assert info.target_name == "cortex-a76" and info.tvm_target["mattr"] == ["+neon"]
    assert elf_machine(info.so_path) == "aarch64"
    assert_matches(run_emulated_aarch64(info.so_path, x), ref)
    with pytest.raises(OfaDeployError, match="run_emulated_aarch64"):
        run_local(info.so_path, x)


# --- CUDA: codegen + nvcc, no GPU needed -----------------------------------------------------------

@pytest.mark.tvm
@pytest.mark.parametrize("target, sm, host_arch", [
    ("cuda-sm80", 80, "x86_64"), ("jetson-orin", 87, "aarch64"), ("cuda-sm90", 90, "x86_64")])
def test_cuda_module_embeds_nvcc_fatbin(tiny, tmp_path, target, sm, host_arch):
    from ofa_deploy.compile import FatbinEntry, build_module, elf_machine, embedded_fatbins, run_local

    info = build_module(tiny[0], target, tmp_path / f"tiny_{target}.so", input_name="input", input_shape=INPUT_SHAPE)
    assert info.tvm_target["arch"] == f"sm_{sm}" and elf_machine(info.so_path) == host_arch
    # compiled kernels (SASS for the arch + PTX for newer GPUs), not CUDA source left for load time
    assert embedded_fatbins(info.so_path) == [[FatbinEntry("ptx", sm), FatbinEntry("sass", sm)]]
    assert b"__global__" not in Path(info.so_path).read_bytes()
    # the default: main replays one captured CUDA graph (BENCHMARKS.md "CUDA modules on a GPU")
    assert info.cuda_graph and b"vm.builtin.cuda_graph.run_or_capture" in Path(info.so_path).read_bytes()
    if host_arch == "x86_64":
        with pytest.raises(OfaDeployError, match="NVIDIA GPU"):
            run_local(info.so_path, tiny[1], device="cpu")


@pytest.mark.tvm
def test_cuda_module_without_a_graph_launches_kernel_by_kernel(tiny, tmp_path):
    from ofa_deploy.compile import build_module

    info = build_module(tiny[0], "cuda-sm80", tmp_path / "kernels.so", input_name="input", input_shape=INPUT_SHAPE,
                        cuda_graph=False)
    assert not info.cuda_graph and b"cuda_graph.run_or_capture" not in Path(info.so_path).read_bytes()
    cpu = build_module(tiny[0], "x86-host", tmp_path / "cpu.so", input_name="input", input_shape=INPUT_SHAPE)
    assert not cpu.cuda_graph  # a CPU module has no graph to capture, whatever the default


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


@pytest.mark.tvm
@pytest.mark.gpu
def test_cuda_module_matches_onnxruntime_on_gpu(tiny, tmp_path):
    if not _has_gpu():
        pytest.skip("no NVIDIA GPU on this machine")
    from ofa_deploy.compile import build_module, run_local

    onnx_path, x, ref = tiny  # sm_80 SASS + PTX: runs on any GPU from Ampere on
    info = build_module(onnx_path, "cuda-sm80", tmp_path / "tiny_gpu.so", input_name="input", input_shape=INPUT_SHAPE)
    assert_matches(run_local(info.so_path, x), ref)  # device picked from the module: cuda


# --- databases, errors, target dicts --------------------------------------------------------------

@pytest.mark.tvm
def test_empty_database_is_hashed_but_not_tuned(tiny, tmp_path):
    from ofa_deploy.compile import build_module
    from ofa_deploy.tuning_logs.database import database_hash

    db = tmp_path / "db"
    db.mkdir()
    (db / "database_workload.json").write_text("")
    (db / "database_tuning_record.json").write_text("")
    info = build_module(tiny[0], "x86-host", tmp_path / "m.so", input_name="input", input_shape=INPUT_SHAPE,
                        database_dir=db)
    assert info.database_hash == database_hash(db) and not info.tuned_records_applied and info.tuned_funcs == 0


@pytest.mark.tvm
def test_every_registry_dict_is_accepted_by_tvm():
    from ofa_deploy.compile import validate_target_specs
    from ofa_deploy.targets import all_targets

    bogus = all_targets()["cortex-a76"].replace(name="bogus", tvm_target={"kind": "llvm", "mcpu": "cortex-a99",
                                                                          "mtriple": "aarch64-linux-gnu"})
    problems = validate_target_specs([*all_targets().values(), bogus])
    assert problems.pop("bogus") and problems == {name: None for name in all_targets()}


@pytest.mark.tvm
def test_bad_input_name_is_a_user_error(tiny, tmp_path):
    from ofa_deploy.compile import build_module

    with pytest.raises(OfaDeployError, match="has no input 'image'"):
        build_module(tiny[0], "x86-host", tmp_path / "m.so", input_name="image", input_shape=INPUT_SHAPE)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_build_refuses_bad_requests_before_starting_tvm(tiny, tmp_path):
    from ofa_deploy.compile import build_module

    kw = {"input_name": "input", "input_shape": INPUT_SHAPE}
    with pytest.raises(OfaDeployError, match="analytic-only"):
        build_module(tiny[0], "vta-zcu104", tmp_path / "m.so", **kw)
    with pytest.raises(OfaDeployError, match="ONNX file not found"):
        build_module(tmp_path / "missing.onnx", "x86-host", tmp_path / "m.so", **kw)
    with pytest.raises(OfaDeployError, match="input_shape"):
        build_module(tiny[0], "x86-host", tmp_path / "m.so", input_name="input", input_shape=(1, 0, 32))
    with pytest.raises(OfaDeployError, match="not a MetaSchedule database"):
        build_module(tiny[0], "x86-host", tmp_path / "m.so", database_dir=tmp_path, **kw)
    with pytest.raises(OfaDeployError, match="known targets"):
        build_module(tiny[0], "llvm -mcpu=cortex-a55", tmp_path / "m.so", **kw)


def test_missing_tools_name_the_package(monkeypatch):
    from ofa_deploy.compile import toolchain

    monkeypatch.setattr(toolchain.shutil, "which", lambda name: None)
    with pytest.raises(OfaDeployError, match="g\\+\\+-aarch64-linux-gnu"):
        toolchain.linker_for("aarch64-linux-gnu-g++")
    with pytest.raises(OfaDeployError, match="qemu-user-static"):
        toolchain.require_qemu_aarch64()


def test_database_hash_and_target_check(tmp_path):
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.database import check_database_target, database_hash

    (tmp_path / "database_workload.json").write_text('["123", "AAAA"]\n')
    record = [0, [[[], []], [1e-3], {"kind": "llvm", "mcpu": "cortex-a76", "mtriple": "aarch64-linux-gnu"}, []]]
    (tmp_path / "database_tuning_record.json").write_text(json.dumps(record) + "\n")
    h = database_hash(tmp_path)
    assert len(h) == 64 and h == database_hash(tmp_path)
    check_database_target(tmp_path, get_target("cortex-a76").tvm_target, "cortex-a76")
    with pytest.raises(OfaDeployError, match="tuned for mcpu=cortex-a76"):
        check_database_target(tmp_path, get_target("cortex-a72").tvm_target, "cortex-a72")
    with (tmp_path / "database_tuning_record.json").open("a") as f:
        f.write(json.dumps(record) + "\n")
    assert database_hash(tmp_path) != h


def test_library_blob_roundtrip_and_cuda_swap():
    from ofa_deploy.compile.library_blob import LibraryBlob, parse_blob, recompile_cuda_payload, serialize_blob

    def u64(v: int) -> bytes:
        return v.to_bytes(8, "little")

    def raw(b: bytes) -> bytes:
        return u64(len(b)) + b

    source = b'extern "C" __global__ void k() {}'
    cuda = raw(b"cuda") + b"FMAP" + raw(source)
    lib = LibraryBlob(indptr=[0, 1, 2, 2], child_indices=[1, 2],
                      entries=[("relax.VMExecutable", b"exec"), ("_lib", None), ("cuda", cuda)])
    body = (u64(4) + u64(0) + u64(1) + u64(2) + u64(2) + u64(2) + u64(1) + u64(2)
            + raw(b"relax.VMExecutable") + raw(b"exec") + raw(b"_lib") + raw(b"cuda") + raw(cuda))
    blob = serialize_blob(lib)
    assert blob == u64(len(body)) + body  # the layout tvm-ffi's library_module.cc reads
    assert parse_blob(blob) == lib
    swapped = recompile_cuda_payload(cuda, [b"other", source], lambda s: b"FATBIN" + s[:3])
    assert swapped == raw(b"fatbin") + b"FMAP" + raw(b"FATBINext")
    assert recompile_cuda_payload(raw(b"cubin") + b"x", [source], lambda s: s) == raw(b"cubin") + b"x"
    with pytest.raises(ValueError):
        recompile_cuda_payload(cuda, [b"unrelated"], lambda s: s)


def test_worker_crash_becomes_ofa_deploy_error(monkeypatch):
    """A segfault in the TVM process must not take the caller down."""
    from ofa_deploy.compile import isolate

    monkeypatch.setattr(isolate, "_WORKER_MODULE", "tests.test_compile_backend")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with pytest.raises(OfaDeployError, match="crashed \\(killed by SIGSEGV\\)[\\s\\S]*about to crash"):
        isolate.run_worker({"op": "segfault"}, what="test job", timeout=60, env=env)
    with pytest.raises(OfaDeployError, match="timed out"):
        isolate.run_worker({"op": "hang"}, what="test job", timeout=3, env=env)


def test_worker_exception_becomes_ofa_deploy_error():
    from ofa_deploy.compile import isolate

    with pytest.raises(OfaDeployError, match="test job: ValueError: unknown worker op 'nope'"):
        isolate.run_worker({"op": "nope"}, what="test job", timeout=120)


if __name__ == "__main__":  # stand-in worker for test_worker_crash_becomes_ofa_deploy_error
    import ctypes
    import time

    op = json.loads(Path(sys.argv[1]).read_text())["op"]
    print("about to crash", file=sys.stderr, flush=True)
    if op == "hang":
        time.sleep(600)
    ctypes.string_at(0)  # SIGSEGV
