"""Read/rewrite the module blob TVM embeds in an exported ``.so`` (``__tvm_ffi__library_bin``).

Why: on a machine without a GPU driver, TVM 0.27's CUDA codegen cannot reach the CUDA runtime
and stores the kernels as CUDA *source* (fmt ``"cuda"``), to be compiled when the ``.so`` is
loaded - by a Python callback. A C++ app on a Jetson has no Python, so we compile the source
with nvcc at build time and store the fatbin instead. Layout (tvm-ffi ``library_module.cc``;
u64 little-endian, ``str``/``bytes`` = u64 length + data, ``vec`` = u64 count + items)::

    blob     = <nbytes: u64> <indptr: vec<u64>> <child_indices: vec<u64>> entry*
    entry    = <kind: str> [<payload: bytes>]        (no payload for kind "_lib")
    cuda payload = <fmt: str> <fmap: opaque> <code: bytes>   (code is last)
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

_U64 = struct.Struct("<Q")


@dataclass
class LibraryBlob:
    indptr: list[int]
    child_indices: list[int]
    entries: list[tuple[str, bytes | None]]  # (kind, payload); payload None for "_lib"


class _Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def u64(self) -> int:
        (value,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return value

    def raw(self) -> bytes:
        n = self.u64()
        if self.pos + n > len(self.data):
            raise ValueError("truncated library blob")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def vec_u64(self) -> list[int]:
        return [self.u64() for _ in range(self.u64())]


def _raw(data: bytes) -> bytes:
    return _U64.pack(len(data)) + data


def parse_blob(blob: bytes) -> LibraryBlob:
    r = _Reader(blob)
    nbytes = r.u64()
    if nbytes + 8 != len(blob):
        raise ValueError(f"library blob size mismatch: header {nbytes} + 8 != {len(blob)}")
    indptr, children = r.vec_u64(), r.vec_u64()
    entries: list[tuple[str, bytes | None]] = []
    for _ in range(len(indptr) - 1):
        kind = r.raw().decode()
        entries.append((kind, None if kind == "_lib" else r.raw()))
    if r.pos != len(blob):
        raise ValueError("trailing bytes in library blob")
    return LibraryBlob(indptr, children, entries)


def serialize_blob(lib: LibraryBlob) -> bytes:
    body = bytearray()
    for vec in (lib.indptr, lib.child_indices):
        body += _U64.pack(len(vec)) + b"".join(_U64.pack(v) for v in vec)
    for kind, payload in lib.entries:
        body += _raw(kind.encode())
        if payload is not None:
            body += _raw(payload)
    return _U64.pack(len(body)) + bytes(body)


def recompile_cuda_payload(payload: bytes, sources: list[bytes],
                           compile_fn: Callable[[bytes], bytes], fmt: str = "fatbin") -> bytes:
    """Swap a ``fmt="cuda"`` payload's source for ``compile_fn(source)``; others unchanged.

    ``sources`` are the CUDA sources of the modules being packed (from ``inspect_source``):
    the one the payload ends with is its code field, which tells where the opaque function
    table ends.
    """
    r = _Reader(payload)
    if r.raw() != b"cuda":
        return payload
    head = r.pos
    for src in sources:
        tail = _raw(src)
        if payload.endswith(tail):
            fmap = payload[head:len(payload) - len(tail)]
            return _raw(fmt.encode()) + fmap + _raw(compile_fn(src))
    raise ValueError("CUDA payload does not end with any known CUDA source")


def blob_to_asm(blob_path: str, symbol: str = "__tvm_ffi__library_bin") -> str:
    """Assembly (``.S``) defining ``symbol`` as the bytes of ``blob_path`` via ``.incbin``.

    TVM's ModulePackImportsToC writes the blob as a C array literal; for a model with its
    weights inside that is ~100 MB of C for the compiler to parse. ``.incbin`` costs nothing
    and works with any GNU toolchain (x86-64, aarch64, armv7: ``%object`` is portable).
    """
    escaped = blob_path.replace("\\", "\\\\").replace('"', '\\"')
    return (f".section .rodata\n.global {symbol}\n.type {symbol}, %object\n.balign 16\n"
            f"{symbol}:\n.incbin \"{escaped}\"\n.size {symbol}, .-{symbol}\n"
            ".section .note.GNU-stack,\"\",%progbits\n")
