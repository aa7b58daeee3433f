"""Build of the one native module, ``features._fastnorm`` (the archive's JSON-lines fast path, with the
vendored yyjson parser). Everything else is declared in pyproject.toml. The module is optional: if it
cannot be compiled, the install goes on and the archive uses its msgspec path, which gives the same rows."""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "features._fastnorm",
            sources=["features/_native/fastnorm.c", "features/_native/yyjson.c"],
            include_dirs=["features/_native"],
            define_macros=[("YYJSON_DISABLE_WRITER", "1"), ("YYJSON_DISABLE_UTILS", "1")],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
