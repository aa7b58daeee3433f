"""Model directory manifests: what a model is, and the sha256 of every file beside it.

A model directory is flat: ``manifest.json`` plus the files it lists under ``"files"``.
``write_manifest`` hashes every other file in the directory; ``read_manifest`` refuses
the directory unless the file set and every hash match, so callers never deserialise
bytes that were not written by ``save``. The manifest is canonical JSON (sorted keys,
no timestamps), so the same data and seed give byte-identical directories, and its own
sha256 (returned by ``manifest_sha256``) can be recorded elsewhere and passed back as
``expected_sha256`` to detect a rewritten manifest as well.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import platform
from importlib import metadata

from training.errors import ModelIntegrityError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_VERSIONED = ("numpy", "scikit-learn", "krcf")


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions that decide whether a saved model rebuilds identically."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        versions[name] = metadata.version(name)
    return versions


def _canonical(manifest: dict) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()


def manifest_sha256(directory: pathlib.Path) -> str:
    return sha256_file(pathlib.Path(directory) / MANIFEST_NAME)


def write_manifest(directory: pathlib.Path, body: dict) -> dict:
    """Write ``manifest.json`` = ``body`` + format version + sha256 of every other file; return it.

    ``body`` must be JSON-serialisable with finite numbers and must not contain ``"files"``.
    Subdirectories are refused: the manifest covers a flat directory.
    """
    directory = pathlib.Path(directory)
    files = {}
    for path in sorted(directory.iterdir()):
        if path.name == MANIFEST_NAME:
            continue
        if not path.is_file():
            raise ModelIntegrityError(
                f"model directory {directory} contains {path.name!r}, which is not a regular file",
                "a model directory holds only files written by save()",
            )
        files[path.name] = sha256_file(path)
    manifest = {**body, "format_version": FORMAT_VERSION, "files": files}
    (directory / MANIFEST_NAME).write_bytes(_canonical(manifest))
    return manifest


def read_manifest(directory: pathlib.Path, expected_sha256: str | None = None) -> dict:
    """Parse and verify ``directory/manifest.json``; raise ``ModelIntegrityError`` on any mismatch.

    Checks, in order: the manifest exists and is JSON (optionally with the expected
    sha256), its format version, that the directory holds exactly the listed files, and
    that each file's sha256 matches. Only then may a caller open the listed files.
    """
    directory = pathlib.Path(directory)
    path = directory / MANIFEST_NAME
    hint = "retrain, or restore the model directory from the run that wrote it"
    if not path.is_file():
        raise ModelIntegrityError(f"no {MANIFEST_NAME} in model directory {directory}", "point at a directory written by save()")
    raw = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise ModelIntegrityError(f"{path} does not have the expected sha256 {expected_sha256[:12]}…", hint)
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise ModelIntegrityError(f"{path} is not valid JSON", hint) from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelIntegrityError(f"{path} is not a format-{FORMAT_VERSION} model manifest", hint)
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise ModelIntegrityError(f"{path} lists no files", hint)
    present = {p.name for p in directory.iterdir() if p.name != MANIFEST_NAME}
    missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
    if missing or extra:
        raise ModelIntegrityError(
            f"model directory {directory} does not match its manifest: missing {missing}, unexpected {extra}", hint
        )
    for name, expected in sorted(listed.items()):
        if sha256_file(directory / name) != expected:
            raise ModelIntegrityError(f"checksum mismatch for {directory / name}: the file changed after save()", hint)
    return manifest
