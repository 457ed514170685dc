"""Progressive-shrinking training of OFA supernets (Cai et al., ICLR 2020)."""

from .schedule import PRESETS, Phase, get_schedule
from .trainer import TrainConfig, TrainResult, train

__all__ = ["PRESETS", "Phase", "TrainConfig", "TrainResult", "get_schedule", "train"]
