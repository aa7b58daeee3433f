"""Digests of auditsift's own source, for what is cached or reused under the code that made it.

The features stage's partials are keyed on the map step's source (``pipeline.stages.features.map_code_digest``)
and the bench's data directories on the generator's (``tools.bench_profiles.generator_digest``): an edit or an
upgrade makes them again instead of reading what older code wrote.
"""
from __future__ import annotations

import hashlib
from pathlib import Path


def source_digest(*places: Path) -> str:
    """sha256 (hex) of the ``.py`` files of each place: a package directory's modules in name order, or one file."""
    digest = hashlib.sha256()
    for place in places:
        for path in sorted(place.glob("*.py")) if place.is_dir() else [place]:
            data = path.read_bytes()
            digest.update(f"{path.name}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()
