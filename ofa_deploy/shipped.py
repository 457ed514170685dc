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
