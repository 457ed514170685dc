"""Subnet search: accuracy predictor, latency models (roofline, VTA), OFA evolution and NSGA-II.

    from ofa_deploy.search import Constraints, load_predictor, run_search, write_outputs
    predictor = load_predictor("predictor.pt")
    result = run_search("vta-ultra96", predictor, constraints=Constraints(latency_ms=25))
    write_outputs(result, "out/", target="vta-ultra96")   # subnet.json, front.csv, pareto.png

Populations are integer gene arrays (:mod:`.genes`); costs and latencies are table lookups
(:mod:`.tables`), so a 100 x 500 search takes about a second.
"""

from .api import DEFAULT_PREDICTOR, OBJECTIVES, predictor_info, resolve_predictor, run_search
from .dataset import AccDatasetConfig, build_acc_dataset, load_acc_dataset, sample_subnets
from .encoding import ENCODING_VERSION, encode, encode_configs, n_features
from .evaluator import Constraints, Evaluator, Scored
from .evolution import EvolutionConfig, evolution_search
from .genes import configs_to_genes, genes_to_config, layout, random_genes
from .latency import LatencyModel, TableLatencyModel, hardware_from_spec, latency_model, vta_report
from .nsga import NsgaConfig, nsga_search
from .output import write_outputs
from .predictor import (AccuracyModel, AccuracyPredictorNet, Predictor, PredictorMeta, TrainConfig, kendall_tau,
                        load_predictor, rmse, save_predictor, train_predictor)
from .proxy import ProxyAccuracy
from .result import SearchResult
from .tables import cost_tables, layers_with_acts
from .verify import Measure, find_measure, verify_top

__all__ = [
    "AccDatasetConfig", "AccuracyModel", "AccuracyPredictorNet", "Constraints", "DEFAULT_PREDICTOR",
    "ENCODING_VERSION", "Evaluator", "EvolutionConfig", "LatencyModel", "Measure", "NsgaConfig", "OBJECTIVES",
    "Predictor", "PredictorMeta", "ProxyAccuracy", "Scored", "SearchResult", "TableLatencyModel", "TrainConfig",
    "build_acc_dataset", "configs_to_genes", "cost_tables", "encode", "encode_configs", "evolution_search",
    "find_measure", "genes_to_config", "hardware_from_spec", "kendall_tau", "latency_model", "layers_with_acts",
    "layout", "load_acc_dataset", "load_predictor", "n_features", "nsga_search", "predictor_info",
    "random_genes", "resolve_predictor", "rmse", "run_search", "sample_subnets", "save_predictor",
    "train_predictor", "verify_top", "vta_report", "write_outputs",
]
