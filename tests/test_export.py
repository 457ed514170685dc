"""ONNX export: structure (opset, folded BN, no dropout) and numerics (ONNX Runtime vs the reference)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ofa_deploy import SubnetConfig
from ofa_deploy.export import INPUT_NAME, OPSET, export_onnx
from tests.conftest import reference_input


@pytest.mark.parametrize("index", [0, 2])  # the max subnet and a mixed one
def test_exported_onnx_reproduces_reference_logits(reference, reference_supernet, tmp_path, index):
    cfg = SubnetConfig.from_dict(reference["records"][index]["arch"])
    path = tmp_path / "m.onnx"
    report = export_onnx(reference_supernet.extract(cfg), cfg.image_size, path, batch=2)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == OPSET == report.opset
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops and "Dropout" not in ops and "Identity" not in ops  # simplified
    assert {"Conv", "HardSwish", "GlobalAveragePool", "Gemm"} <= ops
    assert report.max_abs_err < 1e-4
    x = reference_input(reference["seed"], cfg.image_size)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]
    np.testing.assert_allclose(got, reference["logits"][index], rtol=1e-4, atol=1e-4)


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    import torch

    class Broken(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)) + torch.randn(1)  # non-deterministic: ORT will disagree

    with pytest.raises(Exception):
        export_onnx(Broken(), 128, tmp_path / "b.onnx", simplify=False)
    assert list(tmp_path.iterdir()) == []
