"""``python -m ofa_deploy.compile aarch64-runtime [--print-dir]``: fetch/locate the aarch64 TVM runtime.

Used by examples/deploy_cpp/Makefile; prints the directory holding the aarch64
libtvm_runtime.so and libtvm_ffi.so.
"""

import sys

from .aarch64_runtime import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "aarch64-runtime":
        print("usage: python -m ofa_deploy.compile aarch64-runtime [--print-dir]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(args[1:]))
