"""Subnet search: accuracy predictor, OFA evolution and NSGA-II, re-ranking on the device.

    from ofa_deploy.search import Constraints, load_predictor, run_search, write_outputs
    predictor = load_predictor("predictor.pt")
    result = run_search("vta-ultra96", predictor, constraints=Constraints(latency_ms=25))
    write_outputs(result, "out/", target="vta-ultra96")   # subnet.json, front.csv, pareto.png

Populations are integer gene arrays (:mod:`ofa_deploy.search_space.genes`); costs and latencies
are table lookups (:mod:`ofa_deploy.latency.tables`; the latency models are
:mod:`ofa_deploy.latency`'s), so a 100 x 500 search takes about a second.
"""

from .api import DEFAULT_PREDICTOR, OBJECTIVES, predictor_info, resolve_predictor, run_search
from .dataset import AccDatasetConfig, build_acc_dataset, load_acc_dataset, sample_subnets
from .encoding import ENCODING_VERSION, encode, encode_configs, n_features
from .evaluator import Constraints, Evaluator, Scored
from .evolution import EvolutionConfig, evolution_search
from .nsga import NsgaConfig, nsga_search
from .output import write_outputs
from .predictor import (AccuracyModel, AccuracyPredictorNet, Predictor, PredictorMeta, TrainConfig, kendall_tau,
                        load_predictor, rmse, save_predictor, train_predictor)
from .proxy import ProxyAccuracy
from .result import SearchResult
from .verify import Measure, ScaledLatency, find_measure, verify_search, verify_top

__all__ = [
    "AccDatasetConfig", "AccuracyModel", "AccuracyPredictorNet", "Constraints", "DEFAULT_PREDICTOR",
    "ENCODING_VERSION", "Evaluator", "EvolutionConfig", "Measure", "NsgaConfig", "OBJECTIVES", "Predictor",
    "PredictorMeta", "ProxyAccuracy", "ScaledLatency", "Scored", "SearchResult", "TrainConfig", "build_acc_dataset", "encode",
    "encode_configs", "evolution_search", "find_measure", "kendall_tau", "load_acc_dataset", "load_predictor",
    "n_features", "nsga_search", "predictor_info", "resolve_predictor", "rmse", "run_search", "sample_subnets",
    "save_predictor", "train_predictor", "verify_search", "verify_top", "write_outputs",
]
