"""``ofa-deploy check``: bad folders are refused with one line, before anything runs (no TVM needed).

The check of a real module (x86 here) is in test_deploy.py; a CUDA module's on a GPU in
bench/cuda_on_gpu.py (BENCHMARKS.md, "CUDA modules on a GPU").
"""

import json

import numpy as np
import pytest
import torch

from ofa_deploy.device_check import REFERENCE_FILE, check_compiled, verification
from ofa_deploy.errors import OfaDeployError
from tests.conftest import run_cli


def _folder(tmp_path, kind="cuda", files=("metadata.json", "subnet.so", REFERENCE_FILE)):
    out = tmp_path / "build"
    out.mkdir()
    if "metadata.json" in files:
        (out / "metadata.json").write_text(json.dumps({"target": {"name": f"{kind}-x", "kind": kind},
                                                       "tvm_target": {"arch": "sm_90"}, "subnet_id": "r224-x"}))
    if "subnet.so" in files:
        (out / "subnet.so").write_bytes(b"\x7fELF not really")
    if REFERENCE_FILE in files:
        np.savez(out / REFERENCE_FILE, input=np.zeros((1, 3, 8, 8), np.float32), logits=np.ones((1, 4), np.float32))
    return out


@pytest.mark.parametrize("missing", ["metadata.json", "subnet.so", REFERENCE_FILE])
def test_a_folder_without_what_compile_writes_is_refused_naming_the_file(tmp_path, missing, capsys):
    out = _folder(tmp_path, files=[f for f in ("metadata.json", "subnet.so", REFERENCE_FILE) if f != missing])
    with pytest.raises(OfaDeployError, match=f"no {missing}"):
        check_compiled(out)
    code, _, err = run_cli(["check", str(out)], capsys)
    assert code == 2 and f"no {missing}" in err and len(err.strip().splitlines()) == 1
    assert not list(out.glob("check-*.json"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_cuda_module_without_a_gpu_is_refused_before_it_runs(tmp_path):
    with pytest.raises(OfaDeployError, match=r"CUDA module \(sm_90\) needs an NVIDIA GPU; this machine has none"):
        check_compiled(_folder(tmp_path))


def test_verification_passes_within_the_tolerance_and_fails_beyond():
    expected = np.array([[1.0, -2.0, 4.0]], np.float32)
    assert verification(expected + 3e-3, expected, "here")["status"] == "passed"  # 3e-3 / 4 < 1e-3
    failed = verification(expected + 5e-3, expected, "here")
    assert failed["status"] == "failed" and failed["max_rel_err"] == pytest.approx(5e-3 / 4, rel=1e-3)
    with pytest.raises(OfaDeployError, match=r"returned shape \(1, 2\), expected \(1, 3\)"):
        verification(expected[:, :2], expected, "here")
