"""OFA's accuracy predictor: a 3 x 400 ReLU MLP over the arch encoding, biased by the mean accuracy.

The module layout (``layers.0.0``, ..., ``layers.3``, ``base_acc``) equals the official
``AccuracyPredictor``, so state dicts move between the two. We add what the official file lacks
and a deployment needs: metadata (space, classes/dataset, mean accuracy, encoding version) saved
beside the weights, checked on load, so a predictor is never silently applied to another space.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from ofa_deploy.atomic import atomic_path
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.search_space import get_space, list_spaces

from .encoding import ENCODING_VERSION, encode, n_features

log = logging.getLogger(__name__)


class AccuracyModel(Protocol):
    """Anything that scores gene rows: the trained predictor, or a synthetic proxy in tests."""

    space: str

    def predict(self, genes: np.ndarray) -> np.ndarray:  # accuracy in [0, 1], shape (N,)
        ...


class AccuracyPredictorNet(nn.Module):
    """The official network: ``n_layers`` x (Linear, ReLU), then Linear(hidden, 1, no bias) + base_acc."""

    def __init__(self, in_features: int, hidden: int = 400, n_layers: int = 3, base_acc: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(nn.Linear(in_features if i == 0 else hidden, hidden), nn.ReLU(inplace=True))
            for i in range(n_layers)
        ]
        layers.append(nn.Linear(hidden, 1, bias=False))
        self.layers = nn.Sequential(*layers)
        # The mean accuracy as output bias: the MLP only learns deviations, which trains faster.
        self.base_acc = nn.Parameter(torch.tensor([float(base_acc)]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1) + self.base_acc


@dataclass(frozen=True)
class PredictorMeta:
    """What a predictor was trained for; saved with it and checked wherever it is used."""

    space: str
    n_classes: int
    dataset: str
    mean_acc: float
    encoding_version: int = ENCODING_VERSION
    hidden: int = 400
    n_layers: int = 3
    metrics: dict[str, float] = field(default_factory=dict)  # held-out rmse / kendall_tau, n_train...


@dataclass
class Predictor:
    """A trained predictor with its metadata; ``predict`` scores a whole population in one call."""

    net: AccuracyPredictorNet
    meta: PredictorMeta

    @property
    def space(self) -> str:
        return self.meta.space

    @torch.no_grad()
    def predict(self, genes: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(encode(genes, self.meta.space))
        return self.net(x).numpy().astype(np.float64)


@dataclass(frozen=True)
class TrainConfig:
    """Predictor training settings (OFA trains with Adam on MSE; the sizes are OFA's)."""

    hidden: int = 400  # OFA: 400
    n_layers: int = 3  # OFA: 3
    epochs: int = 300  # plenty for 1-2k samples; ~1 s per 1k samples on 2 cores
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4  # datasets are small (hundreds to a few thousand): 1e-4 held-out tau 0.88 vs 0.83 at 1e-5
    holdout: float = 0.2  # fraction of subnets held out for the reported RMSE / Kendall tau
    seed: int = 0


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op threads.

    Search scores 100 subnets per call: one thread is ~2x faster than two on a 2-core machine
    (no fork/join per layer, no fight with numpy or other processes), so searches run in this.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(true)) ** 2)))


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b (ties handled), O(n^2) in chunks: fine for the few thousand held-out subnets."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(a)
    if n < 2:
        return float("nan")
    concordant = tie_a = tie_b = 0.0
    for start in range(0, n, 512):
        da = np.sign(a[start:start + 512, None] - a[None, :])
        db = np.sign(b[start:start + 512, None] - b[None, :])
        concordant += float((da * db).sum())
        tie_a += float((da != 0).sum())
        tie_b += float((db != 0).sum())
    denom = np.sqrt(tie_a * tie_b)
    return float(concordant / denom) if denom > 0 else float("nan")


def train_predictor(genes: np.ndarray, accs: np.ndarray, *, space: str, n_classes: int, dataset: str,
                    config: TrainConfig = TrainConfig()) -> Predictor:
    """Train on a random (seeded) split; report RMSE and Kendall tau on the held-out part.

    Runs on one torch thread: at these sizes (batches of 128 x 145 features) two threads on a
    2-core machine were 2-9x *slower*, badly so when anything else runs (measured 4 s vs 36 s).
    """
    with torch_threads(1):
        return _train(genes, accs, space=space, n_classes=n_classes, dataset=dataset, config=config)


def _train(genes: np.ndarray, accs: np.ndarray, *, space: str, n_classes: int, dataset: str,
           config: TrainConfig) -> Predictor:
    get_space(space)
    genes, accs = np.asarray(genes), np.asarray(accs, dtype=np.float64)
    if len(genes) < 10:
        raise OfaDeployError(f"acc-predictor: need at least 10 evaluated subnets, got {len(genes)}")
    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(len(genes))
    n_test = max(2, int(round(config.holdout * len(genes)))) if config.holdout > 0 else 0
    test, train = perm[:n_test], perm[n_test:]
    torch.manual_seed(config.seed)
    x = torch.from_numpy(encode(genes, space))
    y = torch.from_numpy(accs.astype(np.float32))
    mean_acc = float(accs[train].mean())
    net = AccuracyPredictorNet(x.shape[1], config.hidden, config.n_layers, mean_acc)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    gen = torch.Generator().manual_seed(config.seed)
    train_t = torch.from_numpy(train)
    net.train()
    for _ in range(config.epochs):
        order = train_t[torch.randperm(len(train_t), generator=gen)]
        for i in range(0, len(order), config.batch_size):
            idx = order[i:i + config.batch_size]
            loss = nn.functional.mse_loss(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        pred = net(x).numpy().astype(np.float64)
    # acc_min/acc_max: the range it learnt from; a prediction above acc_max is an extrapolation
    # (a search that maximises the predictor finds exactly those), and the search says so.
    metrics: dict[str, float] = {"n_train": int(len(train)), "n_test": int(len(test)),
                                 "train_rmse": rmse(pred[train], accs[train]),
                                 "acc_min": float(accs[train].min()), "acc_max": float(accs[train].max())}
    if len(test):
        metrics.update(rmse=rmse(pred[test], accs[test]), kendall_tau=kendall_tau(pred[test], accs[test]))
    meta = PredictorMeta(space=space, n_classes=int(n_classes), dataset=dataset, mean_acc=mean_acc,
                         hidden=config.hidden, n_layers=config.n_layers, metrics=metrics)
    return Predictor(net, meta)


def save_predictor(predictor: Predictor, path: str | os.PathLike[str]) -> None:
    """Atomically write ``{"state_dict": ..., "meta": {...}}`` (a torch file)."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": predictor.net.state_dict(), "meta": asdict(predictor.meta)}, tmp)


def load_predictor(path: str | os.PathLike[str]) -> Predictor:
    """Load and check a predictor file; every problem is one :class:`OfaDeployError` line."""
    p = Path(path)
    if not p.is_file():
        raise OfaDeployError(f"{p}: accuracy predictor file not found")
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # many exception types, all meaning "not a predictor file"
        raise OfaDeployError(f"{p}: not a readable predictor file ({type(err).__name__})") from None
    if not isinstance(obj, dict) or "state_dict" not in obj or "meta" not in obj:
        raise OfaDeployError(f"{p}: not an ofa-deploy accuracy predictor (expected keys state_dict, meta)")
    raw = dict(obj["meta"])
    try:
        meta = PredictorMeta(**raw)
    except TypeError as err:
        raise OfaDeployError(f"{p}: predictor metadata is malformed ({err})") from None
    if meta.space not in list_spaces():
        raise OfaDeployError(f"{p}: predictor is for unknown space {meta.space!r}; known: {', '.join(list_spaces())}")
    if meta.encoding_version != ENCODING_VERSION:
        raise OfaDeployError(f"{p}: predictor uses arch encoding v{meta.encoding_version}, this version reads "
                             f"v{ENCODING_VERSION}; retrain it with ofa-deploy acc-predictor")
    net = AccuracyPredictorNet(n_features(meta.space), meta.hidden, meta.n_layers)
    try:
        net.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError:
        raise OfaDeployError(f"{p}: predictor weights do not fit space {meta.space} "
                             f"({n_features(meta.space)} features, {meta.n_layers} x {meta.hidden})") from None
    return Predictor(net.eval(), meta)
