"""What a user typed -> a registry entry: names, aliases, TVM tags, classic TVM strings, JSON dicts.

TVM 0.27 rejects ``"llvm -mcpu=cortex-a76"``; users (and old tutorials) still type it. We map
such a description onto the registry entry with the same ``mcpu`` (CPU) or ``arch`` (CUDA),
because the entry carries what the string does not: cores, peak figures, cross compiler.
Only options that change code generation and that we can honour are accepted.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from ofa_deploy.errors import OfaDeployError

from .hostcpu import HOST_NAME, detect_host_cpu, host_variant
from .registry import all_targets, known_targets_line, lookup_name
from .spec import TargetSpec

_LLVM_OPTS = ("mtriple", "mcpu", "mattr", "num-cores", "device", "model", "keys")
_CUDA_OPTS = ("arch", "model", "keys", "max_num_threads", "thread_warp_size", "max_threads_per_block",
              "max_shared_memory_per_block", "registers_per_block", "l2_cache_size_bytes")
_IGNORED = ("device", "model", "keys", "tag")  # legacy descriptors, no effect on codegen


def _err(original: str, why: str) -> OfaDeployError:
    return OfaDeployError(f"cannot use target {original!r}: {why}; {known_targets_line()}")


def parse_tvm_string(text: str) -> dict[str, Any]:
    """``"llvm -mcpu=x -mattr=+a,+b"`` -> ``{"kind": "llvm", "mcpu": "x", "mattr": ["+a", "+b"]}``."""
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise _err(text, f"unparsable ({exc})") from None
    if not tokens:
        raise _err(text, "empty")
    out: dict[str, Any] = {"kind": tokens[0].lower()}
    for tok in tokens[1:]:
        key, sep, value = tok.lstrip("-").partition("=")
        if not tok.startswith("-") or not sep or not key:
            raise _err(text, f"expected '-key=value', got {tok!r}")
        out[key] = [v for v in value.split(",") if v] if key in ("mattr", "keys") else value
    return out


def _arch_of_triple(triple: str) -> str:
    head = triple.split("-")[0].lower()
    if head in ("aarch64", "arm64"):
        return "aarch64"
    if head in ("x86_64", "amd64"):
        return "x86_64"
    if head.startswith("arm"):
        return "armv7"
    return head


def _check_keys(opts: dict[str, Any], allowed: tuple[str, ...], original: str) -> None:
    bad = sorted(set(opts) - set(allowed) - {"kind", "host"})
    if bad:
        raise _err(original, f"unsupported option(s) {', '.join('-' + b for b in bad)} "
                             f"(supported for {opts['kind']}: {', '.join('-' + a for a in allowed)})")


def _host_variant(disabled: tuple[str, ...], original: str) -> TargetSpec:
    """This machine with x86 features switched off: a target of its own (``x86-host:-avx,...``)."""
    from .builtin import x86_host

    try:
        return x86_host(disabled)
    except OfaDeployError as exc:
        raise _err(original, str(exc)) from None


def _with_extras(spec: TargetSpec, opts: dict[str, Any], original: str) -> TargetSpec:
    """Keep user's extra -mattr / -num-cores in the returned spec's tvm dict.

    On this machine (``x86-host``) features switched off (``-mattr=-avx,-avx2,...``) make another
    target, ``x86-host:-avx,-avx2,...``: its code is other code (narrower vectors), so its
    database, latency tables and folder must not be the host's.
    """
    mattr = opts.get("mattr") or []
    if isinstance(mattr, str):
        mattr = [m for m in mattr.split(",") if m]
    if spec.name == HOST_NAME:
        disabled = tuple(m[1:] for m in mattr if m.startswith("-"))
        if disabled:
            spec = _host_variant(disabled, original)
            mattr = [m for m in mattr if not m.startswith("-")]
    tvm = dict(spec.tvm_target)
    cores = spec.cores
    if mattr:
        tvm["mattr"] = list(dict.fromkeys([*tvm.get("mattr", []), *mattr]))
    if "num-cores" in opts:
        try:
            cores = int(opts["num-cores"])
        except ValueError:
            raise _err(original, f"-num-cores must be an integer, got {opts['num-cores']!r}") from None
        tvm["num-cores"] = cores
    if tvm == spec.tvm_target:
        return spec
    return spec.replace(tvm_target=tvm, cores=cores)


def _resolve_llvm(opts: dict[str, Any], original: str) -> TargetSpec:
    _check_keys(opts, _LLVM_OPTS, original)
    cpus = {s.tvm_target.get("mcpu"): s for s in all_targets().values()
            if s.kind == "cpu" and not s.analytic_only}
    host = all_targets()["x86-host"]
    triple_arch = _arch_of_triple(opts["mtriple"]) if "mtriple" in opts else None
    mcpu = str(opts.get("mcpu", "")).lower()
    arm_names = sorted(m for m, s in cpus.items() if s.arch == "aarch64")
    if not mcpu:
        if triple_arch in (None, "x86_64"):
            return _with_extras(host, opts, original)
        raise _err(original, f"-mtriple={opts['mtriple']} needs -mcpu=<one of {', '.join(arm_names)}>")
    if mcpu == "native" or (mcpu == detect_host_cpu().mcpu and triple_arch in (None, "x86_64")):
        spec = host
    elif mcpu in cpus:
        spec = cpus[mcpu]
    else:
        known = ", ".join(arm_names + [f"native (this machine: {detect_host_cpu().mcpu})"])
        raise _err(original, f"unknown -mcpu={mcpu} (known: {known})")
    if triple_arch is not None and triple_arch != spec.arch:
        raise _err(original, f"-mtriple={opts['mtriple']} does not match -mcpu={mcpu} ({spec.arch})")
    return _with_extras(spec, opts, original)


def _resolve_cuda(opts: dict[str, Any], original: str) -> TargetSpec:
    _check_keys(opts, _CUDA_OPTS, original)
    gpus = {s.tvm_target.get("arch"): s for s in all_targets().values() if s.kind == "cuda"}
    arch = str(opts.get("arch", "")).lower()
    if arch.endswith("a") and arch[:-1] in gpus:  # sm_90a: same registry entry as sm_90
        arch = arch[:-1]
    if arch in gpus:
        return gpus[arch]
    known = ", ".join(f"{a} ({s.name})" for a, s in gpus.items())
    what = f"unknown -arch={arch}" if arch else "cuda needs -arch=sm_XX"
    raise _err(original, f"{what} (known: {known})")


def resolve(target: str | dict[str, Any], original: str) -> TargetSpec:
    """Map a TVM string or JSON dict (text or dict) onto a registry entry."""
    if isinstance(target, str):
        text = target.strip()
        if text.startswith("{"):
            try:
                target = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _err(original, f"invalid JSON ({exc.msg})") from None
        elif "/" in text.split()[0] and " " not in text:
            raise _err(original, "unknown TVM tag")
        else:
            target = parse_tvm_string(text)
    if not isinstance(target, dict) or "kind" not in target:
        raise _err(original, "a target dict needs a 'kind'")
    # Ignored: legacy descriptors and the derived "feature.*" keys of an exported tvm Target.
    opts = {k: v for k, v in target.items() if k not in _IGNORED and not k.startswith("feature.")}
    kind = str(opts["kind"]).lower()
    opts["kind"] = kind
    if kind == "llvm":
        return _resolve_llvm(opts, original)
    if kind == "cuda":
        return _resolve_cuda(opts, original)
    raise _err(original, f"unknown kind {kind!r} (use llvm or cuda, or a registry name)")


def get_target(target: str | dict[str, Any] | TargetSpec) -> TargetSpec:
    """Resolve what a user typed into a registered :class:`TargetSpec`.

    Accepts a registry name or alias (``cortex-a76``, ``rpi5``), a TVM tag
    (``nvidia/jetson-agx-orin-64gb``), this machine with x86 features off (``x86-host:-avx,-avx2``:
    what ``llvm -mattr=-avx,-avx2`` resolves to), a classic TVM target string (``llvm``,
    ``llvm -mcpu=cortex-a76``, ``llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon``,
    ``cuda -arch=sm_87``), a JSON target dict (as text or ``dict``), or a spec (returned as is).
    TVM 0.27 no longer parses the string form, so it is parsed here; extra ``-mattr`` flags are
    kept in the returned spec's ``tvm_target``.

    Raises:
        OfaDeployError: one line naming the problem and the known targets.
    """
    if isinstance(target, TargetSpec):
        return target
    if isinstance(target, dict):
        return resolve(target, original=repr(target))
    if not isinstance(target, str) or not target.strip():
        raise OfaDeployError(f"target must be a non-empty string; {known_targets_line()}")
    spec = lookup_name(target)
    if spec is not None:
        return spec
    disabled = host_variant(target.strip())
    if disabled:  # a name this function gave out: "x86-host:-avx,-avx2"
        return _host_variant(disabled, target)
    return resolve(target, original=target)
