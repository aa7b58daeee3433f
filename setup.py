"""Build of the one native module, ``features._fastnorm`` (the archive's JSON-lines fast path, with the
vendored yyjson parser). Everything else is declared in pyproject.toml. The module is optional: if it
cannot be compiled, the install goes on and the archive uses its msgspec path, which gives the same rows."""
import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCES = ["features/_native/fastnorm.c", "features/_native/yyjson.c"]
# The sources' digest, compiled in: features.events refuses a module built from other sources (a checkout whose
# fastnorm.c changed since `make install`), which would otherwise decode with yesterday's rules.
DIGEST = hashlib.sha256(b"".join(Path(name).read_bytes() for name in SOURCES)).hexdigest()

setup(
    ext_modules=[
        Extension(
            "features._fastnorm",
            sources=SOURCES,
            include_dirs=["features/_native"],
            define_macros=[("YYJSON_DISABLE_WRITER", "1"), ("YYJSON_DISABLE_UTILS", "1"), ("FASTNORM_SOURCE_SHA256", f'"{DIGEST}"')],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
