"""One call from a target and a predictor to a searched subnet: what the CLI and scripts use."""

from __future__ import annotations

import logging
import os
from typing import Any

from ofa_deploy.errors import CheckpointError, OfaDeployError, NotACheckpointError
from ofa_deploy.latency.base import LatencyModel
from ofa_deploy.latency.choose import latency_model

from ..shipped import DEFAULT_PREDICTOR
from .evaluator import Constraints, Evaluator
from .evolution import EvolutionConfig, evolution_search
from .nsga import NsgaConfig, nsga_search
from .predictor import AccuracyModel, Predictor, load_predictor
from .result import SearchResult
from .verify import Measure, verify_search

log = logging.getLogger(__name__)

OBJECTIVES = ("accuracy", "pareto")


def resolve_predictor(path: str | os.PathLike[str] | None = None,
                      supernet: str | os.PathLike[str] | None = None) -> Predictor:
    """Load ``path`` (default: the shipped predictor) and check it against ``supernet`` if given."""
    if path is None:
        if not DEFAULT_PREDICTOR.is_file():
            raise OfaDeployError(
                f"no accuracy predictor is installed (looked for {DEFAULT_PREDICTOR}); train one with "
                f"'ofa-deploy acc-dataset' and 'ofa-deploy acc-predictor', then pass --acc-predictor PATH")
        path = DEFAULT_PREDICTOR
    predictor = load_predictor(path)
    if supernet is not None:
        from ofa_deploy.search_space import load_supernet

        try:
            net = load_supernet(supernet, predictor.space)
        except NotACheckpointError:
            raise  # not a checkpoint at all: its own message says so
        except CheckpointError as err:
            raise OfaDeployError(f"--supernet does not match the predictor's space {predictor.space}: {err}") from None
        if net.n_classes != predictor.meta.n_classes:
            raise OfaDeployError(
                f"--supernet {supernet} has {net.n_classes} classes but the predictor was trained for "
                f"{predictor.meta.n_classes} ({predictor.meta.dataset}); use a predictor built from this supernet")
    return predictor


def predictor_info(predictor: Predictor, path: str | os.PathLike[str] | None) -> dict[str, Any]:
    m = predictor.meta
    return {"path": str(path or DEFAULT_PREDICTOR), "space": m.space, "n_classes": m.n_classes,
            "dataset": m.dataset, "mean_acc": round(m.mean_acc, 5), "encoding_version": m.encoding_version,
            **{k: v for k, v in m.metrics.items() if k in ("rmse", "kendall_tau", "n_train", "acc_min", "acc_max")}}


def run_search(target: str | Any, accuracy: AccuracyModel, *, constraints: Constraints = Constraints(),
               objective: str = "accuracy", population: int = 100, generations: int = 500, seed: int = 0,
               n_classes: int | None = None, latency: LatencyModel | None = None, progress: bool | None = False,
               verify_k: int = 0, measure: Measure | None = None) -> SearchResult:
    """Search the predictor's space for ``target``; optionally verify the top ``verify_k`` with ``measure``.

    Verification searches again on the model scaled to what was measured while the model is off
    on the device (:func:`.verify.verify_search`).
    """
    if objective not in OBJECTIVES:
        raise OfaDeployError(f"objective: unknown {objective!r}; allowed: {', '.join(OBJECTIVES)}")
    if population < 4 or generations < 1:
        raise OfaDeployError(f"--population must be >= 4 and --generations >= 1 (got {population}, {generations})")
    if verify_k and measure is None:
        raise OfaDeployError(f"--verify-top: no device is reachable for target {target!r}")
    space = accuracy.space
    n_classes = n_classes or getattr(getattr(accuracy, "meta", None), "n_classes", None)
    model = latency or latency_model(target, space, n_classes)

    def search(estimate: LatencyModel) -> SearchResult:  # one search; verification may repeat it on a scaled model
        ev = Evaluator(space, accuracy, estimate, constraints, n_classes)
        if objective == "accuracy":
            return evolution_search(ev, EvolutionConfig(population=population, generations=generations, seed=seed,
                                                        top_k=max(10, verify_k)), progress=progress)
        return nsga_search(ev, NsgaConfig(population=population, generations=generations, seed=seed,
                                          top_k=max(10, verify_k)), progress=progress)

    if verify_k:
        return verify_search(search, model, verify_k, measure, constraints.latency_ms)
    return search(model)
