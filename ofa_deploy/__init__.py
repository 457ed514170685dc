"""ofa-deploy: pick a Once-for-All subnet for a device by its compiled latency, then deploy it.

Public API (everything a script needs; the CLI is a thin layer over it)::

    import ofa_deploy as od
    net = od.load_supernet("ofa_mbv3_d234_e346_k357_w1.0.pth")
    cfg = od.SubnetConfig.from_json("subnet.json")
    model = net.extract(cfg)            # plain torch.nn.Module, eval mode

Names are imported lazily (PEP 562), so ``import ofa_deploy.targets`` or the TVM worker process
do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "CheckpointError": "errors", "ConfigError": "errors", "OfaDeployError": "errors",
    "DEFAULT_SPACE": "search_space", "MobileNetV3": "search_space", "OFAMobileNetV3": "search_space",
    "SearchSpace": "search_space", "SubnetConfig": "search_space", "get_space": "search_space",
    "list_spaces": "search_space", "load_supernet": "search_space", "recalibrate_bn": "search_space",
    "save_supernet": "search_space", "random_subnet": "search_space",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ofa_deploy' has no attribute {name!r}")
