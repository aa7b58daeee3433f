"""pipeline.io.storage: a workdir behaves the same whatever holds it, keys stay inside it, the lock excludes
a second run, and the one scheme dispatch opens local paths and refuses schemes it does not serve."""
from __future__ import annotations

import gzip

import pyarrow as pa
import pytest

from pipeline.config import load_config
from pipeline.errors import InputError, LockedError, StorageError
from pipeline.io.storage import SCHEMES, LocalStorage, open_storage, resolve_inputs, safe_segment
from tests.factory import event, write_jsonl


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "work")


def test_bytes_json_and_parquet_round_trip_and_listing_is_sorted_and_recursive(storage):
    storage.write_bytes("b/2.bin", b"two")
    storage.write_json("a/state.json", {"run": "r1", "flagged": 3})
    storage.write_parquet("b/1/t.parquet", pa.table({"user": ["alice", "bob"], "n": [1, 2]}))
    assert storage.read_bytes("b/2.bin") == b"two"
    assert storage.read_json("a/state.json") == {"run": "r1", "flagged": 3}
    assert storage.read_parquet("b/1/t.parquet", columns=["user"]).column("user").to_pylist() == ["alice", "bob"]
    assert storage.list("") == ["a/state.json", "b/1/t.parquet", "b/2.bin"]
    assert storage.list("b/") == ["b/1/t.parquet", "b/2.bin"]
    assert storage.read_json_or("a/missing.json", {"none": True}) == {"none": True}


@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "a/../../b", "a//b", "a/./b"])
def test_keys_that_leave_the_workdir_are_refused(storage, key):
    with pytest.raises(StorageError, match="unsafe storage key"):
        storage.write_bytes(key, b"x")


def test_create_exclusive_is_exclusive(storage):
    assert storage.create_exclusive("locks/x.lock", b"first")
    assert not storage.create_exclusive("locks/x.lock", b"second")
    assert storage.read_bytes("locks/x.lock") == b"first"


def test_a_second_run_on_a_locked_workdir_is_refused_naming_the_holder(storage):
    with storage.lock():
        with pytest.raises(LockedError, match="locked by another run") as error:
            with storage.lock(wait_seconds=0):
                pass
        assert "auditsift unlock" in error.value.hint
    with storage.lock():  # released when the holder's block ends
        pass
    assert storage.unlock() == f"workdir {storage.url} is not locked"


def test_safe_segment_keeps_names_inside_one_path_segment():
    for name in ("../../etc", "prod/eu", "a b", ".."):
        segment = safe_segment(name)
        assert "/" not in segment and segment not in (".", "..") and segment == safe_segment(name)
    assert safe_segment("prod/eu") != safe_segment("prod_eu")  # cleaned names stay apart


def test_open_storage_dispatches_by_scheme(tmp_path):
    config = load_config()
    local = open_storage(tmp_path / "w", config)
    assert isinstance(local, LocalStorage)
    assert local.lock_expire_seconds == config.storage.lock_expire_minutes * 60
    with pytest.raises(StorageError, match="unsupported workdir URL"):
        open_storage("gs://bucket/prefix", config)
    assert SCHEMES == {"s3": "pipeline.aws.s3"}


def test_resolve_inputs_reads_files_directories_and_globs_in_order(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    write_jsonl(logs / "b.jsonl", [event(user="bob")])
    with gzip.open(logs / "a.jsonl.gz", "wt") as out:
        out.write("{}\n")
    (logs / "labels.json").write_text("{}")
    (logs / ".hidden.jsonl").write_text("{}\n")
    assert [ref.name for ref in resolve_inputs([str(logs)])] == [str(logs / "a.jsonl.gz"), str(logs / "b.jsonl")]
    assert [ref.name for ref in resolve_inputs([str(logs / "*.jsonl")])] == [str(logs / "b.jsonl")]
    ref = resolve_inputs([str(logs / "b.jsonl")])[0]
    assert ref.size == (logs / "b.jsonl").stat().st_size and ref.open().read().startswith(b"{")


def test_a_missing_input_is_one_line_with_a_hint(tmp_path):
    with pytest.raises(InputError, match="input not found") as error:
        resolve_inputs([str(tmp_path / "nope" / "*.gz")])
    assert "glob" in error.value.hint
