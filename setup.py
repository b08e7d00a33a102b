"""Build the optional compiled decoder, ``omaha_proxy/protocol/_cwalk.pyx`` (see its docstring).

Everything else is in pyproject.toml. When the extension cannot be built (no C compiler,
no Cython, lxml without its headers) the install still succeeds with a warning, and the
codec uses its Python walker.
"""

from __future__ import annotations

import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _skip(reason: object) -> None:
    warnings.warn(f"omaha-proxy: compiled decoder not built, using the Python one ({reason})", stacklevel=2)


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the compiled walker is only an accelerator."""

    # distutils' compiler, platform and exec errors share no base class but Exception.
    def run(self) -> None:
        try:
            super().run()
        except Exception as e:
            _skip(e)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            _skip(e)


def _extensions() -> list[Extension]:
    try:
        import lxml
        from Cython.Build import cythonize
    except ImportError as e:
        _skip(e)
        return []
    ext = Extension(
        "omaha_proxy.protocol._cwalk", ["omaha_proxy/protocol/_cwalk.pyx"], include_dirs=lxml.get_include()
    )
    try:
        return cythonize([ext], build_dir="build/cython", quiet=True)
    except Exception as e:  # Cython's CompileError, or the .pyx missing from an sdist
        _skip(e)
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
