"""S3Storage honours the Storage contract that LocalStorage defines, plus encryption and exclusivity."""
from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.aws import session as aws_session
from pipeline.aws.s3 import S3Storage
from pipeline.errors import AwsCallError, LockedError, StorageError
from pipeline.io.storage import LocalStorage, open_storage

pytestmark = pytest.mark.aws


def _exercise(storage) -> dict:
    """The same sequence of calls on any Storage; returns what a caller would observe."""
    storage.write_bytes("archive/cluster=demo/date=2026-01-01/hour=00/part-0.parquet", b"p0")
    storage.write_bytes("archive/cluster=demo/date=2026-01-01/hour=01/part-0.parquet", b"p1")
    storage.write_bytes("archive/cluster=demo2/x.json", b"{}")
    storage.write_json("checkpoints/a.json", {"b": 1, "a": [1, 2]})
    observed = {
        "read": storage.read_bytes("archive/cluster=demo/date=2026-01-01/hour=01/part-0.parquet"),
        "json": storage.read_json("checkpoints/a.json"),
        "list_dir": storage.list("archive/cluster=demo"),
        "list_dir_slash": storage.list("archive/cluster=demo/"),
        "list_file": storage.list("checkpoints/a.json"),
        "list_missing": storage.list("nothing/here"),
        "list_all": storage.list(""),
        "exists": storage.exists("checkpoints/a.json"),
        "exists_missing": storage.exists("checkpoints/b.json"),
        "first_create": storage.create_exclusive("locks/x.lock", b"one"),
        "second_create": storage.create_exclusive("locks/x.lock", b"two"),
        "lock_content": storage.read_bytes("locks/x.lock"),
    }
    storage.write_bytes("checkpoints/a.json", b"overwritten")
    observed["overwritten"] = storage.read_bytes("checkpoints/a.json")
    storage.delete("locks/x.lock")
    storage.delete("locks/never-existed.lock")
    observed["after_delete"] = storage.exists("locks/x.lock")
    storage.delete_prefix("archive/cluster=demo")
    observed["after_delete_prefix"] = storage.list("")
    table = pa.table({"n": [1, 2, 3]})
    storage.write_parquet("features/t.parquet", table)
    observed["parquet"] = storage.read_parquet("features/t.parquet").to_pydict()
    return observed


def test_s3_storage_behaves_like_local_storage(bucket, make_config, tmp_path):
    s3 = open_storage(f"s3://{bucket}/work/dir/", make_config())
    assert isinstance(s3, S3Storage)
    assert s3.url == f"s3://{bucket}/work/dir"
    assert s3.uri("a/b.json") == f"s3://{bucket}/work/dir/a/b.json"
    assert _exercise(s3) == _exercise(LocalStorage(tmp_path / "wd"))
    keys = [o["Key"] for o in aws_session.client("s3", make_config()).list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(k.startswith("work/dir/") for k in keys)


def test_bucket_root_workdir_and_missing_key(bucket, make_config):
    storage = open_storage(f"s3://{bucket}", make_config())
    storage.write_bytes("a/b", b"x")
    assert storage.list("") == ["a/b"]
    with pytest.raises(StorageError, match=f"missing s3://{bucket}/a/c"):
        storage.read_bytes("a/c")
    with pytest.raises(StorageError, match="unsafe"):
        storage.write_bytes("../escape", b"x")


def test_lock_is_exclusive_and_released(bucket, make_config):
    storage = open_storage(f"s3://{bucket}/wd", make_config())
    other = open_storage(f"s3://{bucket}/wd", make_config())
    with storage.lock("archive"):
        assert storage.exists("locks/archive.lock")
        with pytest.raises(LockedError, match="locked by another run"):
            with other.lock("archive"):
                pass
    assert not storage.exists("locks/archive.lock")
    with other.lock("archive"):
        pass


@pytest.mark.parametrize(
    "storage_config, expected",
    [
        ({"sse": "AES256"}, {"ServerSideEncryption": "AES256"}),
        ({"sse": "aws:kms", "kms_key_id": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"},
         {"ServerSideEncryption": "aws:kms",
          "SSEKMSKeyId": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}),
    ],
)
def test_every_write_is_encrypted_as_configured(bucket, make_config, storage_config, expected):
    config = make_config(storage=storage_config)
    storage = open_storage(f"s3://{bucket}/enc", config)
    storage.write_bytes("plain.bin", b"x")
    storage.write_json("doc.json", {"a": 1})
    assert storage.create_exclusive("locks/run.lock", b"{}")
    s3 = aws_session.client("s3", config)
    for key in ("plain.bin", "doc.json", "locks/run.lock"):
        head = s3.head_object(Bucket=bucket, Key=f"enc/{key}")
        assert {k: head.get(k) for k in expected} == expected, key


def test_no_encryption_arguments_when_sse_is_none(bucket, make_config, client_events):
    sent = []
    client_events("before-call.s3.PutObject", lambda params, **_: sent.append(params))
    open_storage(f"s3://{bucket}/plain", make_config()).write_bytes("k", b"x")
    assert "x-amz-server-side-encryption" not in sent[0]["headers"]


def test_failure_is_one_line_naming_the_call(bucket, make_config):
    storage = open_storage("s3://no-such-bucket-auditsift/wd", make_config())
    with pytest.raises(AwsCallError) as caught:
        storage.write_bytes("a", b"x")
    error = caught.value
    assert error.hint
    assert str(error).startswith("S3.PutObject failed (s3://no-such-bucket-auditsift/wd/a): NoSuchBucket")
    assert "\n" not in str(error)
