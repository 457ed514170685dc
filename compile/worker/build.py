"""ONNX -> Relax -> compiled ``.so`` (worker-only: imports TVM).

Pipeline (TVM 0.27 Relax; Relay/tvmc are gone):

1. ``relax.frontend.onnx.from_onnx`` with a static input shape; weights become constants, so
   the ``.so`` is self-contained.
2. :func:`prepare`: DecomposeOpsForInference, CanonicalizeBindings and the ``zero`` pipeline
   (legalize, fold constants, fuse). These are exactly the passes
   ``relax.pipeline.static_shape_tuning_pipeline`` runs before tuning, so the fused PrimFuncs
   are the workloads a MetaSchedule database was tuned on, and ``MetaScheduleApplyDatabase``
   finds them.
3. Schedules (:mod:`.schedules`): the target's own database (``MetaScheduleApplyDatabase``), then
   for CPU targets, whatever it missed from other devices' databases (the same workload, or a
   structural sibling re-fitted to this one's shape), else a rule; every function is counted by
   where its schedule came from (``tuned``, ``transferred``, ``sibling``, ``default``).
4. Lowering (:func:`lowering_pipeline`): for GPUs DLight default schedules for whatever the
   database did not cover (every GPU kernel needs thread bindings), then the backend's
   dataflow-lowering and finalisation passes. No second fusion round (``tvm.compile``'s
   default GPU pipeline would re-fuse tuned functions).
5. ``export_library`` with the target's linker (cross compiler for aarch64); CUDA kernels are
   compiled with nvcc and embedded (:mod:`.cuda`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from typing import Any

import onnx
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.relax.frontend.onnx import from_onnx

from ofa_deploy.targets import DATA_LAYOUTS

from .schedules import Report, is_scheduled, schedule_module, target_cores

log = logging.getLogger(__name__)


class UserInputError(ValueError):
    """Bad request content (reported to the user as is)."""


def load_onnx(path: str, input_name: str, input_shape: list[int]) -> tvm.IRModule:
    model = onnx.load(path)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if input_name not in inputs:
        raise UserInputError(f"ONNX model {path} has no input {input_name!r} (inputs: {', '.join(inputs)})")
    if len(inputs) != 1:
        raise UserInputError(f"ONNX model {path} has {len(inputs)} inputs ({', '.join(inputs)}); expected one")
    return from_onnx(model, shape_dict={input_name: list(input_shape)}, dtype_dict="float32")


def make_target(target_dict: dict[str, Any], target_name: str) -> tvm.target.Target:
    """``tvm.target.Target`` from the registry dict; ``x86-host`` (and its ``x86-host:-avx,...`` variants) gets
    LLVM's own CPU name."""
    from ofa_deploy.targets.hostcpu import host_variant

    target_dict = dict(target_dict)
    if host_variant(target_name) is not None:
        system_cpu = tvm.target.codegen.llvm_get_system_cpu()
        if system_cpu and system_cpu != target_dict.get("mcpu"):
            log.info("x86-host: LLVM reports -mcpu=%s (registry guessed %s); using LLVM's",
                     system_cpu, target_dict.get("mcpu"))
            target_dict["mcpu"] = system_cpu
    return tvm.target.Target(target_dict)


@mutator
class _ClipToMinMax(PyExprMutator):  # type: ignore[misc]
    """``clip(x, lo, hi)`` -> ``minimum(maximum(x, lo), hi)``: the same numbers, in ops ConvertLayout
    knows (it has no rule for ``relax.clip``, and would wrap every hard-swish in two transposes)."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.clip":
            x, lo, hi = call.args
            dtype = x.ty.dtype  # the checked type (0.27 Vars expose no .struct_info in Python)
            return relax.op.minimum(relax.op.maximum(x, relax.const(float(lo.value), dtype)),
                                    relax.const(float(hi.value), dtype))
        return call


def _relax_pass(mutator_cls: type, name: str) -> tvm.transform.Pass:
    """A module pass that runs a fresh ``mutator_cls`` over every Relax function of the module."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def run(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mod[gv] = mutator_cls().visit_expr(func)
        return mod

    return run


_clip_to_min_max = _relax_pass(_ClipToMinMax, "ClipToMinMax")


_ELEMENTWISE = frozenset({"relax.add", "relax.subtract", "relax.multiply", "relax.maximum", "relax.minimum"})


def _op_name(expr: relax.Expr) -> str | None:
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None


@mutator
class _FoldTransposes(PyExprMutator):  # type: ignore[misc]
    """Cancel transposes that undo each other, so a model whose edges are already NHWC computes
    entirely in NHWC.

    Why: ``ofa-deploy profile`` times one block at a time, exported with NHWC edges
    (``Workload.layout``) because between blocks a network is NHWC. Its ONNX permutes to NCHW at
    the input and back at the output; ConvertLayout then adds the opposite transposes around the
    convolutions, and the residual add stays in NCHW between two of them, outside the projection
    convolution that it is fused into inside a network. Three rewrites, each exact:

    - ``permute(x, identity)`` -> ``x``;
    - ``permute(permute(x, q), p)`` -> ``x`` when the two compose to the identity (else one permute);
    - ``permute(op(permute(a, q), permute(b, q')), p)`` for an elementwise ``op`` on equal shapes
      -> ``op(permute(permute(a, q), p), permute(permute(b, q'), p))``, which the second rule folds.

    A whole network (input NCHW, one transpose in, one before the classifier) has no such pairs:
    its fused functions are the same with and without this pass.
    """

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if _op_name(call) != "relax.permute_dims" or call.attrs.axes is None:
            return call
        axes = [int(a) for a in call.attrs.axes]
        if axes == list(range(len(axes))):  # ConvertLayout leaves these where it absorbed an edge permute
            return call.args[0]
        inner = self._bound(call.args[0])
        if _op_name(inner) == "relax.permute_dims" and inner.attrs.axes is not None:
            return self._compose(inner, axes)
        if _op_name(inner) in _ELEMENTWISE:
            operands = [self._bound(a) for a in inner.args]
            same_shape = all(len(a.ty.shape) == len(axes) for a in inner.args) and \
                len({tuple(int(d) for d in a.ty.shape) for a in inner.args}) == 1
            if same_shape and all(_op_name(o) == "relax.permute_dims" and o.attrs.axes is not None
                                  for o in operands):
                args = [self.builder_.normalize(self._compose(o, axes)) for o in operands]
                return relax.Call(inner.op, args, inner.attrs)
        return call

    def _bound(self, expr: relax.Expr) -> relax.Expr:
        """The expression a dataflow variable is bound to (the variable itself if it has none)."""
        if isinstance(expr, relax.Var):
            value = self.lookup_binding(expr)
            return value if value is not None else expr
        return expr

    @staticmethod
    def _compose(inner: relax.Call, axes: list[int]) -> relax.Expr:
        """``permute(inner, axes)`` where ``inner = permute(x, q)``: x itself, or one permute of x."""
        q = [int(a) for a in inner.attrs.axes]
        combined = [q[a] for a in axes]
        if combined == list(range(len(combined))):
            return inner.args[0]
        return relax.op.permute_dims(inner.args[0], combined)


_fold_transposes = _relax_pass(_FoldTransposes, "FoldTransposes")


def prepare(mod: tvm.IRModule, target: tvm.target.Target, data_layout: str) -> tvm.IRModule:
    """Legalize + fuse, identical to the pre-tuning part of static_shape_tuning_pipeline.

    ``data_layout`` ``"NHWC"`` converts every convolution (and what lies between them) to
    channels-last, weights ``HWIO``, with one transpose at the input and one before the
    classifier. Why: a depthwise convolution vectorises along channels there; in NCHW a
    stride-2 depthwise convolution reads every other float along a row, which LLVM emits as
    scalar loads (7x7 s2 over 96 x 112 x 112: 1.07 ms tuned NCHW, 0.34 ms NHWC, 64 trials each,
    znver4). Tuning and building must use the same layout: the fused functions are the
    database's workloads, so the layout has no default here (the build and tune requests must name it).
    """
    if data_layout not in DATA_LAYOUTS:
        raise UserInputError(f"data_layout must be one of {', '.join(DATA_LAYOUTS)}; got {data_layout!r}")
    passes = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
    if data_layout == "NHWC":
        passes += [_clip_to_min_max, relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}),
                   _fold_transposes, relax.transform.DeadCodeElimination(), relax.transform.CanonicalizeBindings()]
    passes.append(relax.get_pipeline("zero"))
    with target:
        return tvm.transform.Sequential(passes)(mod)


def apply_database(mod: tvm.IRModule, target: tvm.target.Target, database_dir: str) -> tvm.IRModule:
    with target:
        return relax.transform.MetaScheduleApplyDatabase(database_dir, enable_warning=False)(mod)


def schedule(mod: tvm.IRModule, target: tvm.target.Target, database_dir: str | None,
             transfer: list[list[str]]) -> tuple[tvm.IRModule, Report]:
    """Every fused function scheduled, and where each schedule came from.

    CPU targets: :func:`.schedules.schedule_module` (own database, other devices' databases, a
    rule). GPU targets: the own database; DLight schedules the rest during lowering (``default``).
    """
    if target.kind.name == "llvm":
        return schedule_module(mod, target, database_dir, [(label, path) for label, path in transfer],
                               target_cores(target))
    if database_dir:
        mod = apply_database(mod, target, database_dir)
    report = Report()
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            report.sources[gv.name_hint] = "tuned" if is_scheduled(func) else "default"
    return mod, report


def lowering_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    is_gpu = "gpu" in target.keys
    if is_gpu:
        from tvm.relax.backend.cuda import pipeline as backend
    else:
        from tvm.relax.backend.cpu_generic import pipeline as backend
    passes = []
    if is_gpu:
        from tvm.s_tir import dlight as dl

        passes.append(dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                              dl.gpu.GeneralReduction(), dl.gpu.Fallback()))
    passes += backend.dataflow_lower_passes(target) + backend.finalize_passes(target)
    return tvm.transform.Sequential(passes)


def build(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``build``: returns the facts BuildInfo needs."""
    mod = load_onnx(request["onnx_path"], request["input_name"], request["input_shape"])
    target = make_target(request["tvm_target"], request["target_name"])
    mod = prepare(mod, target, request["data_layout"])  # required: a default would silently build another layout
    mod, sources = schedule(mod, target, request.get("database_dir"), request.get("transfer_databases") or [])
    counts = sources.counts()
    total = len(sources.sources)
    log.info("%s: %d fused functions: %s", request["target_name"], total,
             ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    # CUDA graphs: RewriteCUDAGraph (in the CUDA finalize passes) acts only when the pass context asks for it
    graphs = (tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": True}) if request.get("cuda_graph")
              else contextlib.nullcontext())
    with target, graphs:
        executable = tvm.compile(mod, target, relax_pipeline=lowering_pipeline(target))
    kwargs: dict[str, Any] = {"cc": request["linker"]}
    if target.kind.name == "cuda":
        from .cuda import make_cuda_packer

        kwargs["fpack_imports"] = make_cuda_packer(target)
    with tempfile.TemporaryDirectory(prefix="ofa_deploy_export_") as workspace:
        executable.export_library(request["out_path"], workspace_dir=workspace, **kwargs)
    return {"tvm_version": tvm.__version__, "tvm_target": json.loads(str(target)),
            "data_layout": request["data_layout"],
            "tuned_funcs": counts["tuned"], "total_funcs": total, "schedule_sources": counts}


def check_targets(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``check_targets``: can TVM build each dict, and does LLVM know each ``mcpu``?

    TVM accepts any ``mcpu`` string and silently emits generic code for a misspelt one, so the
    CPU names are checked against LLVM explicitly.
    """
    problems: dict[str, str | None] = {}
    for name, target_dict in request["targets"].items():
        try:
            target = tvm.target.Target(target_dict)
            for part in (target, target.host):
                if part is None or part.kind.name != "llvm" or "mcpu" not in part.attrs:
                    continue
                triple = str(part.attrs.get("mtriple", "")) or tvm.target.codegen.llvm_get_system_triple()
                if not tvm.target.codegen.llvm_is_valid_cpu(str(part.attrs["mcpu"]), triple):
                    raise ValueError(f"LLVM does not know -mcpu={part.attrs['mcpu']} for {triple}")
            problems[name] = None
        except Exception as exc:  # noqa: BLE001 - reported per target
            problems[name] = f"{type(exc).__name__}: {exc}"
    return {"problems": problems}
