# setup.py exists only to carry cffi_modules and to ship the C contract headers: all metadata
# lives in pyproject.toml.
import shutil
from pathlib import Path

from setuptools import setup
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


setup(cffi_modules=["native/build_ffi.py:ffibuilder"], cmdclass={"build_py": BuildPyWithHeaders})
