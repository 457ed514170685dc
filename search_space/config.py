"""SubnetConfig: one architecture of an OFA space, in the official arch-dict JSON format.

The JSON is ``{"ks": [20 ints], "e": [20 ints], "d": [5 ints], "image_size": int}`` (``"r"`` is
accepted for ``image_size``), exactly what the official once-for-all code reads and writes, so arch
dicts move freely between the two. Other keys (search results, target, accuracy) may sit beside
them and are ignored here. Genes of skipped blocks do not change the network but must still be
valid values, so a config never carries garbage that a later depth change would wake up.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ofa_deploy.atomic import read_json, write_json
from ofa_deploy.errors import ConfigError, shown

from .space import DEFAULT_SPACE, SearchSpace, get_space


@dataclass(frozen=True)
class BlockChoice:
    """One active MBConv block of a subnet, with everything needed to build or cost it."""

    stage: int
    slot: int  # index into ks/e (0..n_blocks-1)
    kernel: int
    expand: int
    in_channels: int
    out_channels: int
    stride: int
    act: str
    use_se: bool


@dataclass(frozen=True)
class SubnetConfig:
    """An OFA MobileNetV3 subnet: per-slot kernel and expand, per-stage depth, input resolution."""

    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    image_size: int
    space: str = DEFAULT_SPACE

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, space: str | None = None, where: str = "subnet") -> "SubnetConfig":
        """Build and validate from an arch dict; ``where`` prefixes error messages (e.g. a path)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a JSON object with keys ks, e, d, image_size")
        if "image_size" not in data and "r" in data:
            data = {**data, "image_size": data["r"]}
        missing = [k for k in ("ks", "e", "d", "image_size") if k not in data]
        if missing:
            raise ConfigError(f"{where}: missing field(s) {', '.join(missing)} (need ks, e, d, image_size)")
        space_name = space or data.get("space", DEFAULT_SPACE)
        get_space(space_name)  # unknown space -> clear error before anything else
        cfg = cls(
            ks=_int_tuple(data["ks"], "ks", where),
            e=_int_tuple(data["e"], "e", where),
            d=_int_tuple(data["d"], "d", where),
            image_size=_int(data["image_size"], "image_size", where),
            space=space_name,
        )
        return cfg.validate(where)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str], *, space: str | None = None) -> "SubnetConfig":
        """Read a subnet.json (the OFA arch dict, possibly with extra result keys)."""
        p = Path(path)
        return cls.from_dict(read_json(p, "subnet config", ConfigError), space=space, where=str(p))

    @classmethod
    def max(cls, space: str = DEFAULT_SPACE, image_size: int | None = None) -> "SubnetConfig":
        return cls._uniform(space, max, image_size)

    @classmethod
    def min(cls, space: str = DEFAULT_SPACE, image_size: int | None = None) -> "SubnetConfig":
        return cls._uniform(space, min, image_size)

    @classmethod
    def uniform(cls, kernel: int, expand: int, depth: int, image_size: int, space: str = DEFAULT_SPACE) -> "SubnetConfig":
        """Every block with the same kernel and expand, every stage with the same depth."""
        sp = get_space(space)
        return cls(
            (kernel,) * sp.n_blocks, (expand,) * sp.n_blocks, (depth,) * sp.n_stages, image_size, sp.name
        ).validate()

    @classmethod
    def _uniform(cls, space: str, pick: Any, image_size: int | None) -> "SubnetConfig":
        sp = get_space(space)
        r = image_size if image_size is not None else pick(sp.resolution_choices)
        return cls.uniform(pick(sp.kernel_choices), pick(sp.expand_choices), pick(sp.depth_choices), r, space)

    @classmethod
    def sample(cls, rng: np.random.Generator, space: str = DEFAULT_SPACE, *, kernels: Sequence[int] | None = None,
               expands: Sequence[int] | None = None, depths: Sequence[int] | None = None,
               image_size: int | None = None) -> "SubnetConfig":
        """Draw one config uniformly per gene (the OFA sampler), from an explicit generator.

        ``kernels``/``expands``/``depths`` narrow the choices (a progressive-shrinking phase);
        ``image_size`` fixes the resolution instead of drawing it.
        """
        sp = get_space(space)
        return cls(
            ks=tuple(int(v) for v in rng.choice(kernels or sp.kernel_choices, sp.n_blocks)),
            e=tuple(int(v) for v in rng.choice(expands or sp.expand_choices, sp.n_blocks)),
            d=tuple(int(v) for v in rng.choice(depths or sp.depth_choices, sp.n_stages)),
            image_size=image_size if image_size is not None else int(rng.choice(sp.resolution_choices)),
            space=sp.name,
        )

    # -- validation -----------------------------------------------------------------------------
    def validate(self, where: str = "subnet") -> "SubnetConfig":
        """Check every gene against the space; raise :class:`ConfigError` naming field and index."""
        sp = get_space(self.space)
        for name, values, n, allowed in (
            ("ks", self.ks, sp.n_blocks, sp.kernel_choices),
            ("e", self.e, sp.n_blocks, sp.expand_choices),
            ("d", self.d, sp.n_stages, sp.depth_choices),
        ):
            if len(values) != n:
                raise ConfigError(f"{where}: field '{name}' has {len(values)} values, expected {n} (space {sp.name})")
            for i, v in enumerate(values):
                if v not in allowed:
                    raise ConfigError(
                        f"{where}: field '{name}[{i}]' = {shown(v)} is not allowed; allowed values: {_fmt(allowed)}"
                    )
        if self.image_size not in sp.resolution_choices:
            r = sp.resolution_choices
            raise ConfigError(
                f"{where}: field 'image_size' = {shown(self.image_size)} is not allowed; allowed values: "
                f"{r[0]}..{r[-1]} in steps of {r[1] - r[0]}"
            )
        return self

    # -- views ----------------------------------------------------------------------------------
    @property
    def search_space(self) -> SearchSpace:
        return get_space(self.space)

    def blocks(self) -> Iterator[BlockChoice]:
        """The active elastic blocks in network order (skipped slots are not yielded)."""
        sp = self.search_space
        for stage, spec in enumerate(sp.stages):
            in_ch = sp.stage_in_channels(stage)
            for j in range(self.d[stage]):
                slot = stage * sp.max_depth + j
                yield BlockChoice(
                    stage=stage,
                    slot=slot,
                    kernel=self.ks[slot],
                    expand=self.e[slot],
                    in_channels=in_ch,
                    out_channels=spec.out_channels,
                    stride=spec.stride if j == 0 else 1,
                    act=spec.act,
                    use_se=spec.use_se,
                )
                in_ch = spec.out_channels

    def canonical(self) -> "SubnetConfig":
        """Same network with skipped slots' genes set to the smallest choice (for equality/hashing)."""
        sp = self.search_space
        active = {b.slot for b in self.blocks()}
        ks = tuple(k if i in active else min(sp.kernel_choices) for i, k in enumerate(self.ks))
        e = tuple(x if i in active else min(sp.expand_choices) for i, x in enumerate(self.e))
        return SubnetConfig(ks, e, self.d, self.image_size, self.space)

    @property
    def id(self) -> str:
        """Short canonical id: resolution, depths and a hash of the active genes.

        Two configs that build the same network (differing only in skipped genes) share an id.
        """
        c = self.canonical()
        digest = hashlib.sha1(json.dumps(c.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return f"r{self.image_size}-d{''.join(map(str, self.d))}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        """The official arch dict (plus the space name)."""
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "image_size": self.image_size, "space": self.space}

    def to_json(self, path: str | os.PathLike[str], extra: Mapping[str, Any] | None = None) -> None:
        """Write atomically; ``extra`` keys (results, target...) are stored beside the arch dict."""
        write_json(path, {**self.to_dict(), **(dict(extra) if extra else {})})


def _fmt(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values)


def _int(value: Any, field: str, where: str) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer()))):
        raise ConfigError(f"{where}: field '{field}' = {shown(value)} is not an integer")
    return int(value)



def _int_tuple(value: Any, field: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: field '{field}' must be a list of integers, got {type(value).__name__}")
    return tuple(_int(v, f"{field}[{i}]", where) for i, v in enumerate(value))
