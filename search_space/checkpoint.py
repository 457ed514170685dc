"""Load and save supernet checkpoints in the official once-for-all format.

The official files are ``torch.save({"state_dict": ...})`` with the parameter names of
``OFAMobileNetV3``; ours are the same (plus optional metadata keys), so either side reads the other.
Loading never downloads anything: a path is required for trained weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ofa_deploy.atomic import atomic_path
from ofa_deploy.errors import CheckpointError, NotACheckpointError

from .space import DEFAULT_SPACE, SearchSpace, get_space, list_spaces
from .supernet import OFAMobileNetV3

log = logging.getLogger(__name__)


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle (protocol 2+)


def _not_a_checkpoint(p: Path, err: BaseException) -> NotACheckpointError:
    """Why ``torch.load`` failed, in the user's terms: the file's kind, not torch's internal error."""
    try:
        head = p.read_bytes()[:4096]
    except OSError as read_err:
        return NotACheckpointError(f"{p}: cannot read the checkpoint ({read_err.strerror or read_err})")
    if not head:
        return NotACheckpointError(f"{p}: empty file, not a PyTorch checkpoint")
    if head.startswith(ZIP_MAGIC):
        return NotACheckpointError(f"{p}: damaged or truncated PyTorch checkpoint (its zip archive is incomplete)")
    if head.startswith(PICKLE_MAGIC):
        if "weights_only" in str(err).lower() or "unsupported global" in str(err).lower():
            return NotACheckpointError(f"{p}: not a weights-only checkpoint (it pickles Python objects, "
                                             "which are never executed here); save the state_dict")
        return NotACheckpointError(f"{p}: damaged or truncated PyTorch checkpoint (legacy format)")
    try:
        head.decode("utf-8")
        kind = "a text file"
    except UnicodeDecodeError:
        kind = "not a PyTorch file"
    return NotACheckpointError(f"{p}: not a PyTorch checkpoint ({kind})")


def load_torch_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` (weights only, on the CPU) of a file the user named or a run wrote.

    Anything that is not a PyTorch file (missing, a folder, text, truncated, pickled objects) is
    a :class:`NotACheckpointError` naming what the file is; torch's own exception, whose text is
    about its internals, is only in the traceback (``--debug``).
    """
    p = Path(path)
    if p.is_dir():
        raise NotACheckpointError(f"{p}: is a folder, not a checkpoint file")
    if not p.is_file():
        raise NotACheckpointError(f"{p}: checkpoint file not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean "not a checkpoint"
        raise _not_a_checkpoint(p, err) from err


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (state_dict, metadata) from a checkpoint file; accepts a bare state dict too.

    A file that is no supernet checkpoint is a :class:`NotACheckpointError` (:func:`load_torch_file`).
    """
    p = Path(path)
    obj = load_torch_file(p)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj["state_dict"]
    else:
        meta = {}
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in obj.items()):
        raise NotACheckpointError(f"{p}: not a supernet checkpoint: expected {{'state_dict': {{name: tensor}}}} "
                                        "(official once-for-all format)")
    # Checkpoints saved from DataParallel/DDP prefix every name with "module.".
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return state, meta


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise one clear line for the first missing, unexpected or mis-shaped parameter."""
    expected = model.state_dict()
    space = getattr(model, "space", None)
    hint = f" (supernet space {space.name}; known spaces: {', '.join(list_spaces())})" if space else ""
    if not set(state) & set(expected):
        raise NotACheckpointError(f"{where}: not a supernet checkpoint: none of its {len(state)} parameters is one of "
                              f"the network's ({next(iter(state), 'none')!r} ...)")
    for name, t in expected.items():
        if name not in state:
            raise CheckpointError(f"{where}: parameter '{name}' is missing{hint}")
        if tuple(state[name].shape) != tuple(t.shape):
            raise CheckpointError(
                f"{where}: parameter '{name}' has shape {tuple(state[name].shape)}, expected {tuple(t.shape)}{hint}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{where}: unexpected parameter '{extra[0]}' ({len(extra)} in all){hint}")


def load_supernet(checkpoint: str | os.PathLike[str] | None = None,
                  space: str | SearchSpace = DEFAULT_SPACE) -> OFAMobileNetV3:
    """Build the supernet of ``space`` and load ``checkpoint`` (official format) into it.

    The number of classes is read from the checkpoint's classifier (1000 for ImageNet ones). With
    ``checkpoint=None`` the weights are PyTorch's default random initialisation (seed torch
    yourself for reproducibility); this is only useful for structure and speed work.
    """
    sp = get_space(space)
    if checkpoint is None:
        log.warning("no checkpoint given: the supernet has random weights")
        return OFAMobileNetV3(sp).eval()
    state, meta = read_state_dict(checkpoint)
    if "space" in meta and meta["space"] != sp.name:
        raise CheckpointError(f"{checkpoint}: checkpoint is for space {meta['space']!r}, not {sp.name!r}")
    classifier = state.get("classifier.linear.weight")
    net = OFAMobileNetV3(sp, n_classes=int(classifier.shape[0]) if classifier is not None else None)
    check_state_dict(net, state, str(checkpoint))
    net.load_state_dict(state, strict=True)
    net.classes = meta.get("classes")  # class names, when the trainer saved them
    return net.eval()


def save_supernet(net: OFAMobileNetV3, path: str | os.PathLike[str], **metadata: Any) -> None:
    """Atomically save in the official format, with ``space`` and any metadata beside it."""
    with atomic_path(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}  # any device or layout
        torch.save({"state_dict": state, "space": net.space.name, "n_classes": net.n_classes, **metadata}, tmp)
