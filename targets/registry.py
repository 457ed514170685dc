"""The target registry (timm-style): ``register_target``, ``all_targets``, ``list_targets``.

Entries are registered as zero-argument factories and built on first use, so importing this
package never probes the machine; ``x86-host`` reads ``/proc/cpuinfo`` only when the registry is
first consulted. The built-in entries (``builtin.py``) are registered then, too. Turning what a
user typed into an entry (names, aliases, TVM strings: ``get_target``) is ``parse.py``'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

from .spec import TargetSpec

TargetFactory = Callable[[], TargetSpec]

_FACTORIES: dict[str, TargetFactory] = {}
_SPECS: dict[str, TargetSpec] = {}


@overload
def register_target(obj: TargetFactory) -> TargetFactory: ...
@overload
def register_target(obj: TargetSpec) -> TargetSpec: ...


def register_target(obj: TargetFactory | TargetSpec) -> TargetFactory | TargetSpec:
    """Register a target: use as a decorator on a factory, or call with a ready spec.

    The factory's name (underscores become dashes) must equal the spec's ``name``; it is
    checked when the spec is built. Registering an existing name replaces it (so a user can
    override a built-in entry with measured peak figures).
    """
    _ensure_builtins()  # so a user entry registered first is not overwritten by a built-in
    if isinstance(obj, TargetSpec):
        spec = obj
        _FACTORIES[spec.name] = lambda: spec
        _SPECS.pop(spec.name, None)
        return obj
    name = obj.__name__.replace("_", "-")
    _FACTORIES[name] = obj
    _SPECS.pop(name, None)
    return obj


def _build(name: str) -> TargetSpec:
    if name not in _SPECS:
        spec = _FACTORIES[name]()
        if spec.name != name:
            raise ValueError(f"target factory {name!r} returned a spec named {spec.name!r}")
        _SPECS[name] = spec
    return _SPECS[name]


def all_targets() -> dict[str, TargetSpec]:
    """Every registered spec by name, in registration order."""
    _ensure_builtins()
    return {name: _build(name) for name in _FACTORIES}


def list_targets(kind: str | None = None) -> list[str]:
    """Registered target names, optionally only those of one kind (``cpu``/``cuda``/``vta``)."""
    return [name for name, spec in all_targets().items() if kind is None or spec.kind == kind]


def known_targets_line() -> str:
    """One line listing the names users can type, for error messages."""
    return "known targets: " + ", ".join(list_targets())


def lookup_name(text: str) -> TargetSpec | None:
    """The spec registered under ``text`` or one of its aliases (case-insensitive), else None."""
    key = text.strip().lower()
    specs = all_targets()
    if key in specs:
        return specs[key]
    for spec in specs.values():
        if key in (a.lower() for a in spec.aliases):
            return spec
    return None


_BUILTINS_LOADED = False


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from .builtin import BUILTINS  # local: building the factories is deferred to first use

        for factory in BUILTINS:
            register_target(factory)
