"""Static subnet -> ONNX, simplified, checked, and verified against PyTorch with ONNX Runtime.

ONNX is the hand-off format to TVM (``compile/``) and to other runtimes, so every file we write is
(1) simplified with onnxsim (BN folded, dropout gone), (2) ``onnx.checker`` clean and (3) numerically
equal to the PyTorch module on a seeded input. A file that fails any of these is never written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path
from .errors import OfaDeployError

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportReport:
    path: str
    opset: int
    input_shape: tuple[int, ...]
    nodes: int
    op_types: tuple[str, ...]
    max_abs_err: float  # ONNX Runtime vs PyTorch on the seeded input
    tolerance: float

    def as_dict(self) -> dict:
        return asdict(self)


def seeded_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The standard-normal test input used for every numeric comparison (numpy's PCG64)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def export_onnx(model: torch.nn.Module, image_size: int, path: str | os.PathLike[str], *, batch: int = 1,
                seed: int = 0, tolerance: float = 1e-4, simplify: bool = True,
                input_shape: tuple[int, ...] | None = None) -> ExportReport:
    """Export ``model`` (eval mode, NCHW float32 input) to ``path``; verify before writing it.

    The input is ``(batch, 3, image_size, image_size)`` unless ``input_shape`` gives another one
    (a single block of a network, for the per-block latency tables).
    """
    import onnx
    import onnxruntime as ort

    model = model.eval()
    shape = tuple(input_shape) if input_shape is not None else (batch, 3, image_size, image_size)
    x = seeded_input(shape, seed)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    with atomic_path(path) as tmp:
        torch.onnx.export(model, (torch.from_numpy(x),), str(tmp), opset_version=OPSET, dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True)
        proto = onnx.load(str(tmp))
        if simplify:
            from onnxsim import simplify as onnxsim_simplify

            proto, ok = onnxsim_simplify(proto)
            if not ok:
                raise OfaDeployError("onnxsim could not validate the simplified model")
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        err = float(np.abs(got - expected).max())
        if not np.allclose(got, expected, rtol=tolerance, atol=tolerance):
            raise OfaDeployError(f"ONNX Runtime output differs from PyTorch by {err:.3g} (tolerance {tolerance})")
    report = ExportReport(str(Path(path)), OPSET, shape, len(proto.graph.node),
                          tuple(sorted({n.op_type for n in proto.graph.node})), err, tolerance)
    log.info("wrote %s (%d nodes, ORT vs torch max abs err %.2e)", path, report.nodes, err)
    return report
