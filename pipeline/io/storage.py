"""One storage layer for the workdir: a local directory or ``s3://bucket/prefix``.

Every stage reads and writes through ``Storage`` with relative, '/'-separated keys,
so archive, features, models, reports, checkpoints and locks behave the same on
disk and on S3. Writes are atomic: a reader sees the old object or the new one,
never a partial one (temporary file then rename locally; S3 PUTs are atomic).
"""
from __future__ import annotations

import functools
import glob
import hashlib
import importlib
import io
import os
import re
import shutil
import socket
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import StorageConfig
from pipeline.errors import InputError, LockedError, StorageError

_SAFE_SEGMENT = re.compile(r"[^A-Za-z0-9._=-]")


def safe_segment(value: str, max_len: int = 80) -> str:
    """Turn any string (an entity name, a cluster) into one harmless path segment.

    Log-derived names never become raw path segments: '/', '..' and control bytes
    are replaced, and a short hash keeps distinct names distinct.
    """

    cleaned = _SAFE_SEGMENT.sub("_", value)[:max_len].strip(".") or "_"
    if cleaned != value:
        cleaned = f"{cleaned}-{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"
    return cleaned


def _parse_holder(raw: bytes | None) -> dict:
    """The lock owner record; a lock caught mid-write or unreadable counts as held by someone unknown."""
    if not raw:
        return {}
    try:
        holder = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def lock_released(holder: dict, expire_seconds: float) -> str | None:
    """Why a lock no longer holds (its owner is gone, or it is older than ``expire_seconds``), or None while it
    does. A record that cannot be read holds: its owner and age are unknown (``auditsift unlock --force``)."""
    if not holder:
        return None
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return f"pid {holder['pid']} is no longer running"
        except PermissionError:
            pass
    age = _lock_age(holder)
    if age is not None and age > expire_seconds:
        return f"older than storage.lock_expire_minutes ({_duration(expire_seconds)})"
    return None


def describe_holder(holder: dict, expire_seconds: float) -> str:
    """'host H, pid P, taken 7h 03m ago, expires after 6h 00m': whose a lock is, for messages."""
    if not holder:
        return "owner unknown: the lock record cannot be read"
    age = _lock_age(holder)
    taken = f"taken {_duration(age)} ago" if age is not None else "taken at an unknown time"
    return f"host {holder.get('host')}, pid {holder.get('pid')}, {taken}, expires after {_duration(expire_seconds)}"


def _lock_age(holder: dict) -> float | None:
    try:
        return time.time() - float(holder["since"])
    except (KeyError, TypeError, ValueError):
        return None


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds % 60:02d}s"


def check_key(key: str) -> str:
    parts = key.split("/")
    if key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise StorageError(f"refusing unsafe storage key {key!r}", hint="keys are relative and contain no '..'")
    return key


PARQUET_OPTIONS = {"compression": "zstd", "write_statistics": True, "use_dictionary": True}


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as the Parquet file ``Storage.write_parquet`` writes (``PARQUET_OPTIONS``)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    return sink.getvalue()


class Storage(ABC):
    """A workdir. Keys are relative paths such as ``archive/cluster=c/date=2026-11-01/hour=03/part-0.parquet``."""

    url: str

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    def write_stream(self, key: str, source: BinaryIO) -> None:
        """Write everything ``source`` holds from its position on: for content too large to hold as bytes."""
        self.write_bytes(key, source.read())

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys below ``prefix`` (recursive), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent; True when this call created it."""

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for ``key`` when the storage is local, else None."""
        return None

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)

    def read_json(self, key: str):
        return orjson.loads(self.read_bytes(key))

    def write_json(self, key: str, value) -> None:
        self.write_bytes(key, orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))

    def read_json_or(self, key: str, default):
        return self.read_json(key) if self.exists(key) else default

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(key)), columns=columns)

    def write_parquet(self, key: str, table: pa.Table) -> None:
        self.write_bytes(key, parquet_bytes(table))

    def uri(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    # storage.lock_expire_minutes: its default here, the configured value once open_storage has the config
    lock_expire_seconds: float = StorageConfig.model_fields["lock_expire_minutes"].default * 60

    @contextmanager
    def lock(self, name: str = "run", wait_seconds: float = 0.0, stale_seconds: float | None = None) -> Iterator[None]:
        """Hold ``locks/<name>.lock`` for the duration; a second holder waits or gets LockedError.

        A lock whose owner is gone (same host, pid not running) is taken over at once, and any lock
        older than ``stale_seconds`` (default ``lock_expire_seconds``) is taken over even when its pid
        exists: after a reboot or in a container the pid may belong to another process for good, and
        a pid on another host cannot be checked at all. ``unlock`` removes a lock by hand.
        """
        key = f"locks/{name}.lock"
        expire = self.lock_expire_seconds if stale_seconds is None else stale_seconds
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "since": time.time()}
        deadline = time.monotonic() + wait_seconds
        while not self.create_exclusive(key, orjson.dumps(owner)):
            raw = self.read_bytes_or(key)
            holder = _parse_holder(raw)
            if raw is not None and lock_released(holder, expire):
                self.take_over(key, raw)
                continue
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"workdir {self.url} is locked by another run (host {holder.get('host')}, pid {holder.get('pid')})",
                    hint=f"wait for it to finish ({describe_holder(holder, expire)}); if that run is certainly dead, "
                         f"`auditsift unlock --workdir {self.url}` removes its lock",
                )
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        try:
            yield
        finally:
            if _parse_holder(self.read_bytes_or(key)).get("token") == owner["token"]:
                self.delete(key)

    def unlock(self, name: str = "run", force: bool = False) -> str:
        """Remove ``locks/<name>.lock`` when its owner is gone or it has expired, or whatever its state with
        ``force``; returns what was removed, whose it was (host, pid, age). A lock that still holds is refused
        with LockedError naming its holder."""
        key = f"locks/{name}.lock"
        raw = self.read_bytes_or(key)
        if raw is None:
            return f"workdir {self.url} is not locked"
        holder = _parse_holder(raw)
        who = describe_holder(holder, self.lock_expire_seconds)
        why = lock_released(holder, self.lock_expire_seconds)
        if not why and not force:
            raise LockedError(f"workdir {self.url} is locked by a run that may still be going ({who}); lock not removed",
                              hint="wait for it to finish or expire; pass --force only if that run is certainly dead")
        if not self.take_over(key, raw):
            raise LockedError(f"the lock of workdir {self.url} changed while it was being removed; nothing removed",
                              hint="run `auditsift unlock` again to see the new holder")
        return f"removed the lock of workdir {self.url}: {who}; {why or 'still held: removed with --force'}"

    def read_bytes_or(self, key: str) -> bytes | None:
        try:
            return self.read_bytes(key)
        except StorageError:
            return None

    def take_over(self, key: str, expected: bytes) -> bool:
        """Remove ``key`` only if it still holds ``expected`` (a stale lock). Best effort here (read, compare,
        delete); LocalStorage does it atomically."""
        if self.read_bytes_or(key) != expected:
            return False
        self.delete(key)
        return True


class LocalStorage(Storage):
    """A workdir on the local filesystem; atomic writes via temporary file + rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.url = str(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"cannot create workdir {self.root}: {error.strerror}", hint="choose a writable --workdir") from None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"missing {self.uri(key)}", hint="run the stage that produces it first") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self.write_stream(key, io.BytesIO(data))

    def write_stream(self, key: str, source: BinaryIO) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as handle:
                shutil.copyfileobj(source, handle, 1 << 20)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.exists():
            return []
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in base.rglob("*")
            if path.is_file() and not path.name.startswith(".")
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write a temporary file, then hard-link it into place: the file appears complete or not at all."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.new")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def take_over(self, key: str, expected: bytes) -> bool:
        """Atomically claim a stale file: rename it aside, and put it back if it was not the stale one."""
        path = self._path(key)
        claim = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.claim")
        try:
            os.rename(path, claim)
        except FileNotFoundError:
            return False
        if claim.read_bytes() == expected:
            claim.unlink()
            return True
        try:
            os.link(claim, path)
        except FileExistsError:
            pass
        claim.unlink()
        return False


# The one scheme dispatch of workdirs and inputs. A URL scheme other than a local path is served by the module
# named here, imported when such a URL is first opened: boto3 loads only for s3://, and pipeline.io never imports
# pipeline.aws (the layers: tests/test_architecture.py). The module defines ``open_workdir(url, config) -> Storage``
# and ``list_inputs(url, config) -> list[InputRef]``.
SCHEMES = {"s3": "pipeline.aws.s3"}


def scheme_adapter(scheme: str):
    return importlib.import_module(SCHEMES[scheme])


def open_storage(url: str | Path, config=None) -> Storage:
    """Open a workdir by URL: ``s3://bucket/prefix`` or a local path."""
    text = str(url)
    if text.startswith("s3://"):
        storage = scheme_adapter("s3").open_workdir(text, config)
    elif "://" in text:
        raise StorageError(f"unsupported workdir URL {text!r}", hint="use a local directory or s3://bucket/prefix")
    else:
        storage = LocalStorage(text)
    if config is not None:
        storage.lock_expire_seconds = config.storage.lock_expire_minutes * 60
    return storage


@dataclass(frozen=True)
class InputRef:
    """One input object: a display name and a way to open it as bytes."""

    name: str
    open: Callable[[], BinaryIO]
    size: int | None = None


_INPUT_SUFFIXES = (".jsonl", ".json", ".log", ".gz", ".txt", "")


def resolve_local_inputs(spec: str) -> list[InputRef]:
    """A file, a directory (recursively, audit-looking files) or a glob, in sorted order."""
    path = Path(spec)
    if path.is_file():
        paths = [path]
    elif path.is_dir():
        paths = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.name != "labels.json" and p.suffix in _INPUT_SUFFIXES
        )
    else:
        paths = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not paths:
            raise InputError(f"input not found: {spec}", hint="pass a file, a directory or a quoted glob such as 'logs/*.gz'")
    # functools.partial, not a lambda: a local input can be pickled to an archive worker process
    return [InputRef(str(p), functools.partial(open, p, "rb"), p.stat().st_size) for p in paths]


def resolve_inputs(specs: list[str], config=None) -> list[InputRef]:
    """Every input object of ``specs`` (files, directories, globs, s3:// prefixes), in order."""
    refs: list[InputRef] = []
    for spec in specs:
        if spec.startswith("s3://"):
            refs.extend(scheme_adapter("s3").list_inputs(spec, config))
        else:
            refs.extend(resolve_local_inputs(spec))
    return refs
