"""Search speed: one OFA-default evolution (population 100 x 500 generations) and one NSGA-II run.

Uses the real predictor network (OFA's 3 x 400 MLP; weights seeded at random unless --acc-predictor
is given: inference cost does not depend on them) and the VTA latency model. Table building is a
one-time cost per (space, target), reported separately. Target: <= 10 s per search on 2 cores.

    python bench/search_speed.py                       # evolution + nsga2 on vta-ultra96
    python bench/search_speed.py --target cortex-a76 --latency-ms 15
"""

from __future__ import annotations

import logging
import time

import click
import torch

from ofa_deploy.latency import latency_model
from ofa_deploy.search import (Constraints, Evaluator, EvolutionConfig, NsgaConfig, evolution_search, load_predictor,
                               nsga_search)
from ofa_deploy.search.encoding import n_features
from ofa_deploy.search.predictor import AccuracyPredictorNet, Predictor, PredictorMeta
from ofa_deploy.search_space import DEFAULT_SPACE


@click.command()
@click.option("--target", default="vta-ultra96", show_default=True)
@click.option("--latency-ms", default=25.0, show_default=True, type=float)
@click.option("--population", default=100, show_default=True, type=int)
@click.option("--generations", default=500, show_default=True, type=int)
@click.option("--acc-predictor", default=None, type=click.Path(), help="A trained predictor (default: seeded random MLP).")
@click.option("--skip-nsga", is_flag=True)
@click.option("--seed", default=0, show_default=True, type=int)
def main(target: str, latency_ms: float, population: int, generations: int, acc_predictor: str | None,
         skip_nsga: bool, seed: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    if acc_predictor:
        predictor = load_predictor(acc_predictor)
    else:
        torch.manual_seed(seed)
        predictor = Predictor(AccuracyPredictorNet(n_features(DEFAULT_SPACE), base_acc=0.75).eval(),
                              PredictorMeta(DEFAULT_SPACE, 1000, "random-init", 0.75))
    t0 = time.perf_counter()
    model = latency_model(target, predictor.space)
    ev = Evaluator(predictor.space, predictor, model, Constraints(latency_ms=latency_ms))
    ev.check_satisfiable()
    click.echo(f"tables    {time.perf_counter() - t0:6.2f} s  (one-time: cost + latency tables for {target})")
    runs = [("evolution", lambda e: evolution_search(e, EvolutionConfig(population, generations, seed=seed)))]
    if not skip_nsga:
        runs.append(("nsga2", lambda e: nsga_search(e, NsgaConfig(population, generations, seed=seed))))
    for name, run in runs:
        ev = Evaluator(predictor.space, predictor, model, Constraints(latency_ms=latency_ms))
        t0 = time.perf_counter()
        res = run(ev)
        dt = time.perf_counter() - t0
        click.echo(f"{name:<9} {dt:6.2f} s  {res.evaluations:,} evaluations  {res.evaluations / dt:,.0f} evaluations/s  "
              f"(population {population} x {generations} generations; best {res.best.latency[0]:.2f} ms "
              f"<= {latency_ms:g} ms budget)")


if __name__ == "__main__":
    main()
