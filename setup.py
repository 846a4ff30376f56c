# setup.py exists only to carry cffi_modules and to ship the C contract headers: all metadata
# lives in pyproject.toml.
import shutil
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
