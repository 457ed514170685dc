"""Where ofa-deploy caches things it can rebuild (demo dataset, aarch64 runtime, host bandwidth).

Pure standard library, so the target registry and the TVM worker can use it without torch.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$OFA_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/ofa_deploy``, else ``~/.cache/ofa_deploy``."""
    if os.environ.get("OFA_DEPLOY_CACHE"):
        return Path(os.environ["OFA_DEPLOY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ofa_deploy"
