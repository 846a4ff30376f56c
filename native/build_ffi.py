"""cffi build script (API / out-of-line mode) for the C fast path.

The cdef is native/include/lb_api.h read verbatim: that header is the only
contract between Python and C, so nothing here may restate a declaration.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

NATIVE = Path(__file__).resolve().parent
HEADER = NATIVE / "include" / "lb_api.h"
SOURCES = sorted(str(p.relative_to(NATIVE.parent)) for p in (NATIVE / "src").glob("*.c"))

# -flto: the packet path spans parse/conn/proto/xmit files; link-time inlining
# removes the calls between them (measured: ~30 instructions per packet).
CFLAGS = ["-std=gnu11", "-O2", "-g", "-flto", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing", "-pthread"]
# LB_SANITIZE=1 builds the extension with ASan/UBSan (used by `make test-sanitize`).
if os.environ.get("LB_SANITIZE"):
    CFLAGS += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]

ffibuilder = FFI()
ffibuilder.cdef(HEADER.read_text())
ffibuilder.set_source(
    "lb._fastpath",
    '#include "lb_internal.h"\n',
    sources=SOURCES,
    include_dirs=[str(NATIVE / "include")],
    libraries=["netfilter_queue", "mnl", "xdp", "bpf", "pthread"],
    extra_compile_args=CFLAGS,
    extra_link_args=["-pthread", "-flto", "-O2"] + (["-fsanitize=address,undefined"] if os.environ.get("LB_SANITIZE") else []),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
