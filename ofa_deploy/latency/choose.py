"""From a ``--target`` string to a latency model: which model a target gets.

A target profiled with ``ofa-deploy profile`` (``tuning_logs/<target>/latency_model.json``, still
matching the current database and TVM) gets its measured-tables model (:mod:`.measured`); any
other gets the analytic roofline, with efficiencies learned on a profiled target when
``tuning_logs/<target>/estimated_model.json`` exists (:mod:`.learned`). VTA boards get the VTA
model (:mod:`.vta`). Every other target comes from the target registry,
``ofa_deploy.targets.get_target(text) -> TargetSpec`` (fields name, kind, arch, cores,
peak_gflops_fp32, peak_gbps, tvm_target); :func:`.roofline.hardware_from_spec` is the one place
that reads a spec's peaks, so an interface change touches one function.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.search_space import SearchSpace
from ofa_deploy.targets.hostcpu import host_variant

from .base import LatencyModel, TableLatencyModel
from .learned import guessed_model, load_estimated_model
from .measured import load_measured_model, load_nearest_model
from .roofline import spec_to_hardware
from .vta import BOARDS, get_board, vta_layer_ms

log = logging.getLogger(__name__)


def lookup_target(text: str) -> Any:
    """``ofa_deploy.targets.get_target(text)``, with a clear error while the registry is missing."""
    try:
        registry = importlib.import_module("ofa_deploy.targets")
    except ImportError:
        registry = None
    get_target = getattr(registry, "get_target", None)
    if get_target is None:
        raise OfaDeployError(f"target {text!r}: the target registry (ofa_deploy.targets.get_target) is not "
                             f"installed; VTA targets work without it: {', '.join(sorted(BOARDS))}")
    return get_target(text)


def latency_model(target: str | Any, space: str | SearchSpace, n_classes: int | None = None) -> LatencyModel:
    """The latency model for ``target`` (a target string or a TargetSpec-like object).

    The profiled model of measured tuned code when ``tuning_logs/<target>/latency_model.json``
    exists and matches the current database and TVM (else a warning, once); otherwise the
    analytic roofline with the efficiencies of ``tuning_logs/<target>/estimated_model.json``
    (learned on a profiled target, :mod:`.learned`) or, without one, the named guesses; every
    roofline is labelled ``estimated`` and warned about (VTA: the VTA model).
    """
    if isinstance(target, str) and target.strip() in BOARDS:
        board = get_board(target.strip())
        return TableLatencyModel(space, vta_layer_ms(board), target=board.name, dtype_bytes=1, n_classes=n_classes,
                                 basis=f"analytic VTA model ({board.name})")
    spec = lookup_target(target) if isinstance(target, str) else target
    if getattr(spec, "kind", None) == "vta":
        board = get_board(spec.name)
        return TableLatencyModel(space, vta_layer_ms(board), target=board.name, dtype_bytes=1, n_classes=n_classes,
                                 basis=f"analytic VTA model ({board.name})")
    name = target if isinstance(target, str) else spec.name
    measured = load_measured_model(spec.name, space, n_classes, label=name)
    if measured is not None:
        return measured
    if getattr(spec, "kind", None) == "cpu" and host_variant(str(getattr(spec, "name", ""))) is not None:
        nearest = load_nearest_model(spec.name, space, n_classes, label=name)  # says so in one line
        if nearest is not None:
            return nearest
    hw = spec_to_hardware(spec)
    estimated = load_estimated_model(hw, space, n_classes, label=name)
    if estimated is not None:
        return estimated
    return guessed_model(hw, space, n_classes, label=name)
