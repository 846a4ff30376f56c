# setup.py exists only to carry cffi_modules and to ship the C contract headers: all metadata
# lives in pyproject.toml.
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildPyWithHeaders(build_py):
    """Copy native/include/*.h into the package as lb/include/: lb.consts reads the C values from
    that text at run time (an installed lb has no native/ next to it)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the package is the checkout: lb.consts finds native/include itself
            return
        target = Path(self.build_lib) / "lb" / "include"
        target.mkdir(parents=True, exist_ok=True)
        for header in sorted(Path(__file__).resolve().parent.joinpath("native", "include").glob("*.h")):
            shutil.copyfile(header, target / header.name)
        build_xdp_program(Path(self.build_lib) / "lb" / "lb_xdp.bpf.o")


def build_xdp_program(out: Path) -> None:
    """The XDP program of lbd --packet-source afxdp (the Makefile builds it for the checkout). Without
    clang the package is built without it: lbd then refuses --packet-source afxdp, naming the file."""
    clang = shutil.which("clang")
    if clang is None:
        print("warning: clang not found: lb/lb_xdp.bpf.o not built (lbd --packet-source afxdp unavailable)")
        return
    machine = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True, check=False).stdout.strip()
    src = Path(__file__).resolve().parent / "native" / "bpf" / "lb_xdp.bpf.c"
    subprocess.run([clang, "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", f"-I/usr/include/{machine}",
                    "-c", str(src), "-o", str(out)], check=True)


# The IPVS-ABI preload library for unmodified ipvsadm/keepalived (native/preload/, `lbd-exec`): a
# plain shared object, never imported; built as an extension only so that every install (editable,
# wheel, `make install`) puts it inside the package, where lb.ipvsabi.launcher finds it.
IPVS_PRELOAD = Extension(
    "lb._ipvs_preload",
    sources=["native/preload/lbipvs.c", "native/preload/lbipvs_wire.c"],
    extra_compile_args=["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"],
    libraries=["dl", "pthread"],
)

setup(cffi_modules=["native/build_ffi.py:ffibuilder"], ext_modules=[IPVS_PRELOAD],
      cmdclass={"build_py": BuildPyWithHeaders})
