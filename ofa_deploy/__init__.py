"""ofa-deploy: pick a Once-for-All subnet for a device by its compiled latency, then deploy it.

Public API (everything a script needs; the CLI is a thin layer over it)::

    import ofa_deploy as od
    net = od.load_supernet("ofa_mbv3_d234_e346_k357_w1.0.pth")
    cfg = od.SubnetConfig.from_json("subnet.json")
    model = net.extract(cfg)            # plain torch.nn.Module, eval mode
    costs = od.count_costs(cfg)         # MACs, params, bytes, arithmetic intensity
"""

from .errors import CheckpointError, ConfigError, OfaDeployError
from .search_space import (
    DEFAULT_SPACE,
    MobileNetV3,
    OFAMobileNetV3,
    SearchSpace,
    SubnetConfig,
    get_space,
    list_spaces,
    load_supernet,
    recalibrate_bn,
    save_supernet,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "DEFAULT_SPACE", "MobileNetV3", "OFAMobileNetV3", "OfaDeployError",
    "SearchSpace", "SubnetConfig", "get_space", "list_spaces", "load_supernet", "recalibrate_bn",
    "save_supernet",
]
