"""Which torch device a training or evaluation process uses.

One rule for the trainer, the accuracy dataset and the benches: ``auto`` takes this process's GPU
(``cuda:LOCAL_RANK``, as torchrun numbers them) when torch sees one, else the CPU.
"""

from __future__ import annotations

import os

import torch

from ofa_deploy.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """The device this process computes on; ``auto`` takes its GPU (``cuda:LOCAL_RANK``) when there is one."""
    if name not in DEVICES:
        raise ConfigError(f"device: unknown {name!r}; allowed: {', '.join(DEVICES)}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' asked for, but torch sees no GPU (CPU-only build or no driver); "
                          "allowed here: auto, cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)  # nccl needs each process on its own GPU before it starts
    return device
