"""Search outputs: subnet.json (OFA arch dict + results), front.csv and a Pareto plot, written together.

The folder follows the output rule (ofa_deploy/outputs.py): new, empty, or an earlier search's.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ofa_deploy.atomic import atomic_path, write_text
from ofa_deploy.outputs import OutputFolder

from .result import SearchResult

log = logging.getLogger(__name__)

SEARCH_FILES = ("subnet.json", "front.csv", "pareto.png")
CSV_FIELDS = ("rank", "id", "predicted_accuracy", "latency_ms", "latency_source", "latency_basis", "macs", "params",
              "intensity", "intensity_dtype", "gops", "image_size", "ks", "e", "d")


def gops(row: dict[str, Any]) -> float | None:
    """Achieved GOP/s of a result row; None for an emulated latency, which is no speed to divide by."""
    if row["latency_source"] == "emulated":
        return None
    return round(2 * row["macs"] / (row["latency_ms"] * 1e-3) / 1e9, 3)


def subnet_extra(result: SearchResult, target: str, predictor_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result keys stored beside the arch dict in subnet.json."""
    row = result.row(result.best, 0)
    row.pop("config")
    row.pop("id")
    extra: dict[str, Any] = {"target": target, **row, "gops": gops(row)}
    extra["search"] = {"objective": result.objective, **result.settings, "evaluations": result.evaluations,
                       "seconds": round(result.seconds, 3), "front_size": len(result.front)}
    if predictor_info:
        extra["search"]["accuracy_predictor"] = predictor_info
    if result.verified:
        extra["verified"] = result.verified
        extra["measured_on"] = result.measured_on
    return extra


def front_csv(result: SearchResult) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for i in range(len(result.front)):
        row = result.row(result.front, i)
        cfg = row.pop("config")
        row["gops"] = gops(row)
        writer.writerow({"rank": i, **row, "ks": " ".join(map(str, cfg.ks)), "e": " ".join(map(str, cfg.e)),
                         "d": " ".join(map(str, cfg.d))})
    return buf.getvalue()


def pareto_png(result: SearchResult, path: str | os.PathLike[str], budget_ms: float | None = None) -> None:
    """Accuracy vs latency, coloured by intensity; the chosen subnet starred. Agg only (no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    f = result.front
    order = np.argsort(f.latency)
    sc = ax.scatter(f.latency, 100 * f.acc, c=f.intensity, cmap="viridis", s=18, zorder=3)
    if result.objective == "accuracy":
        ax.step(f.latency[order], 100 * f.acc[order], where="post", color="0.6", lw=1, zorder=2)
    ax.scatter(result.best.latency, 100 * result.best.acc, marker="*", s=220, c="red", zorder=4, label="chosen")
    if budget_ms is not None:
        ax.axvline(budget_ms, color="red", ls="--", lw=1, label=f"budget {budget_ms:g} ms")
    dtype = {1: "int8", 4: "fp32"}.get(result.dtype_bytes, "")
    fig.colorbar(sc, ax=ax, label=f"arithmetic intensity (ops/byte, {dtype})")
    basis = f"\n{result.latency_basis}" if result.latency_basis and result.latency_source != "measured" else ""
    ax.set_xlabel(f"latency (ms, {result.latency_source}) on {result.target}{basis}", fontsize=9 if basis else None)
    ax.set_ylabel("predicted top-1 accuracy (%)")
    ax.set_title(f"{result.objective} search: {len(f)} Pareto subnets")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def output_folder(out_dir: str | os.PathLike[str]) -> OutputFolder:
    """The search's output folder under the output rule (checked by the CLI before the search runs)."""
    return OutputFolder(out_dir, "search", SEARCH_FILES)


def write_outputs(result: SearchResult, out_dir: str | os.PathLike[str], *, target: str,
                  predictor_info: dict[str, Any] | None = None,
                  inputs: tuple[str | None, ...] = ()) -> dict[str, Path]:
    """Write subnet.json, front.csv and pareto.png into ``out_dir``, all three or none.

    ``inputs`` (the supernet, the predictor) are never replaced (ofa_deploy/outputs.py).
    """
    out = Path(out_dir)
    with output_folder(out).staged(inputs) as stage:
        result.best_config.to_json(stage / "subnet.json", extra=subnet_extra(result, target, predictor_info))
        write_text(stage / "front.csv", front_csv(result))
        pareto_png(result, stage / "pareto.png", result.settings.get("constraints", {}).get("latency_ms"))
    return {"subnet": out / "subnet.json", "front": out / "front.csv", "plot": out / "pareto.png"}
