"""The OFA MobileNetV3 search space: spaces, subnet configs (and as gene rows), the supernet, static subnets."""

from .bn import random_subnet, recalibrate_bn
from .checkpoint import load_supernet, save_supernet
from .config import BlockChoice, SubnetConfig
from .space import DEFAULT_SPACE, SearchSpace, get_space, list_spaces, make_divisible
from .static import MobileNetV3
from .supernet import OFAMobileNetV3

__all__ = [
    "BlockChoice", "DEFAULT_SPACE", "MobileNetV3", "OFAMobileNetV3", "SearchSpace", "SubnetConfig",
    "get_space", "list_spaces", "load_supernet", "make_divisible", "random_subnet", "recalibrate_bn", "save_supernet",
]
