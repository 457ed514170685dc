"""The supernet and accuracy predictor that ship inside the package, so the main job runs out of the box.

Both were made by the project's own commands on the built-in demo dataset (10 synthetic shape
classes; see BENCHMARKS.md for the exact commands and hours). They are demo-quality: real users
train on their own data (``ofa-deploy train``) and pass ``--supernet`` / ``--acc-predictor``.
"""

from __future__ import annotations

from pathlib import Path

DEFAULTS_DIR = Path(__file__).resolve().parent / "defaults"
DEFAULT_SUPERNET = DEFAULTS_DIR / "supernet.pth"
DEFAULT_PREDICTOR = DEFAULTS_DIR / "acc_predictor.pt"


def default_supernet() -> Path | None:
    """The shipped supernet checkpoint, or None when this installation has none."""
    return DEFAULT_SUPERNET if DEFAULT_SUPERNET.is_file() else None


def ship(supernet_path: str | Path, predictor_path: str | Path, provenance: str) -> tuple[Path, Path]:
    """Install a trained supernet (stored as float16 to halve its size) and its predictor as the defaults.

    ``load_supernet`` copies the float16 tensors into the float32 network, so the shipped model
    computes in float32; the rounding of the weights is the only difference. ``provenance`` (the
    commands that made them) is stored in the checkpoint and in ``defaults/PROVENANCE.md``.
    """
    import shutil

    import torch

    from .atomic import atomic_path, write_text
    from .search.predictor import load_predictor
    from .search_space import DEFAULT_SPACE, load_supernet
    from .search_space.checkpoint import read_state_dict

    state, meta = read_state_dict(supernet_path)
    net = load_supernet(supernet_path, meta.get("space", DEFAULT_SPACE))
    predictor = load_predictor(predictor_path)  # checked before anything is replaced
    if predictor.meta.space != net.space.name or predictor.meta.n_classes != net.n_classes:
        from .errors import OfaDeployError

        raise OfaDeployError(f"{predictor_path}: predictor is for {predictor.meta.space} / {predictor.meta.n_classes} "
                             f"classes, the supernet is {net.space.name} / {net.n_classes}")
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    DEFAULTS_DIR.mkdir(parents=True, exist_ok=True)
    with atomic_path(DEFAULT_SUPERNET) as tmp:
        torch.save({**meta, "state_dict": half, "stored_dtype": "float16", "provenance": provenance}, tmp)
    with atomic_path(DEFAULT_PREDICTOR) as tmp:
        shutil.copyfile(predictor_path, tmp)
    write_text(DEFAULTS_DIR / "PROVENANCE.md", f"# How the shipped defaults were made\n\n{provenance.strip()}\n")
    return DEFAULT_SUPERNET, DEFAULT_PREDICTOR


if __name__ == "__main__":  # python -m ofa_deploy.shipped SUPERNET PREDICTOR PROVENANCE.md
    import sys

    paths = ship(sys.argv[1], sys.argv[2], Path(sys.argv[3]).read_text())
    print(*(f"{p} ({p.stat().st_size / 1e6:.1f} MB)" for p in paths), sep="\n")
