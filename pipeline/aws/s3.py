"""S3 as a workdir (``S3Storage``) and as an input source (``list_s3_inputs``).

A workdir ``s3://bucket/prefix`` behaves like a local one: relative keys, sorted
recursive listing, atomic whole-object writes (a PUT is atomic), and
``create_exclusive`` through a conditional PUT (``If-None-Match: *``), which S3 has
supported since August 2024 and which gives the workdir lock real mutual exclusion.
Every write carries the configured server-side encryption (``storage.sse``:
``AES256`` or ``aws:kms`` with ``storage.kms_key_id``).
"""
from __future__ import annotations

import io
import logging
from typing import BinaryIO, Iterator

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.aws import session as aws
from pipeline.config import Config
from pipeline.errors import AwsCallError, InputError, StorageError
from pipeline.io.storage import InputRef, Storage, check_key

log = logging.getLogger(__name__)
_MISSING = {"NoSuchKey", "404", "NotFound"}
_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
EXPORT_TEST_OBJECT = "aws-logs-write-test"
DELETE_BATCH = 1000


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix without surrounding '/') of ``s3://bucket/prefix``."""
    if not url.startswith("s3://"):
        raise StorageError(f"not an S3 URL: {url!r}", hint="use s3://bucket/prefix")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket or "/" in bucket:
        raise StorageError(f"S3 URL without a bucket: {url!r}", hint="use s3://bucket/prefix")
    return bucket, prefix.strip("/")


def _default_config():

    return Config()


def sse_arguments(config) -> dict[str, str]:
    """PutObject encryption arguments for ``config.storage`` (none, SSE-S3 or SSE-KMS)."""
    storage = config.storage
    if storage.sse == "AES256":
        return {"ServerSideEncryption": "AES256"}
    if storage.sse == "aws:kms":
        arguments = {"ServerSideEncryption": "aws:kms"}
        if storage.kms_key_id:
            arguments["SSEKMSKeyId"] = storage.kms_key_id
        return arguments
    return {}


class S3Storage(Storage):
    """A workdir below ``s3://bucket/prefix``; the S3 client is made on first use."""

    def __init__(self, url: str, config=None):
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.config = config if config is not None else _default_config()
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = aws.client("s3", self.config)
        return self._client

    def object_key(self, key: str) -> str:
        """The full S3 key of a workdir-relative key."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1:] if self.prefix else full_key

    def _fail(self, error: Exception, method, key: str) -> AwsCallError:
        return aws.aws_error(error, method, self.uri(key))

    def read_bytes(self, key: str) -> bytes:
        method = self.client.get_object
        try:
            body = method(Bucket=self.bucket, Key=self.object_key(key))["Body"]
            return body.read()
        except ClientError as error:
            if aws.error_code(error) in _MISSING:
                raise StorageError(f"missing {self.uri(key)}", hint="run the stage that produces it first") from None
            raise self._fail(error, method, key) from None
        except BotoCoreError as error:
            raise self._fail(error, method, key) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self._put(key, data)

    def write_stream(self, key: str, source: BinaryIO) -> None:
        self._put(key, source)

    def _put(self, key: str, body: bytes | BinaryIO) -> None:
        """One PUT (a seekable file body is streamed, and rewound by botocore to retry)."""
        aws.call(self.client.put_object, self.uri(key), Bucket=self.bucket, Key=self.object_key(key), Body=body,
                 **sse_arguments(self.config))

    def exists(self, key: str) -> bool:
        method = self.client.head_object
        try:
            method(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as error:
            if aws.error_code(error) in _MISSING:
                return False
            raise self._fail(error, method, key) from None
        except BotoCoreError as error:
            raise self._fail(error, method, key) from None
        return True

    def list(self, prefix: str) -> list[str]:
        """Keys below ``prefix`` as a path (``a/b`` matches ``a/b`` and ``a/b/...``, not ``a/bc``), sorted."""
        base = prefix.strip("/")
        full = self.object_key(base) if base else self.prefix
        keys = []
        for page in aws.paginate(self.client.list_objects_v2, self.uri(base), Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                name = item["Key"]
                if name.endswith("/"):
                    continue
                if not full or name == full or name.startswith(full + "/"):
                    keys.append(self._relative(name))
        return sorted(keys)

    def delete(self, key: str) -> None:
        aws.call(self.client.delete_object, self.uri(key), Bucket=self.bucket, Key=self.object_key(key))

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key below ``prefix`` with DeleteObjects, 1000 keys a call; any per-key error raises."""
        keys = self.list(prefix)
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            response = aws.call(
                self.client.delete_objects, self.uri(prefix), Bucket=self.bucket,
                Delete={"Objects": [{"Key": self.object_key(k)} for k in batch], "Quiet": True},
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise AwsCallError(
                    f"S3.DeleteObjects failed ({self.uri(prefix)}): {len(errors)} keys, first {first.get('Key')}: "
                    f"{first.get('Code')}: {first.get('Message')}",
                    hint="grant s3:DeleteObject on the workdir prefix",
                )

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Conditional PUT (``If-None-Match: *``): True if created, False if the key exists or a racing PUT won."""
        method = self.client.put_object
        try:
            method(Bucket=self.bucket, Key=self.object_key(key), Body=data, IfNoneMatch="*", **sse_arguments(self.config))
        except ClientError as error:
            if aws.error_code(error) in _CONFLICT:
                return False
            raise self._fail(error, method, key) from None
        except BotoCoreError as error:
            raise self._fail(error, method, key) from None
        return True


class _ObjectStream(io.RawIOBase):
    """A GetObject body as a raw stream; a network failure mid-read becomes an ``AwsCallError``.

    botocore's read timeouts subclass ``OSError``; unwrapped, the readers would count
    them as damaged gzip and carry on with a partial object.
    """

    def __init__(self, body, method, uri: str):
        self._body = body
        self._method = method
        self._uri = uri

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._body.read(len(buffer))
        except (ClientError, BotoCoreError) as error:
            raise aws.aws_error(error, self._method, self._uri) from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def open_object(s3_client, bucket: str, key: str) -> BinaryIO:
    """A buffered binary stream over one S3 object, read as it is consumed (``read(n)`` works)."""
    uri = f"s3://{bucket}/{key}"
    response = aws.call(s3_client.get_object, uri, Bucket=bucket, Key=key)
    return io.BufferedReader(_ObjectStream(response["Body"], s3_client.get_object, uri), buffer_size=1 << 20)


def iter_objects(s3_client, bucket: str, prefix: str) -> Iterator[dict]:
    for page in aws.paginate(s3_client.list_objects_v2, f"s3://{bucket}/{prefix}", Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def list_s3_inputs(uri: str, config=None) -> list[InputRef]:
    """Every object below ``s3://bucket/prefix`` as an input, sorted by key.

    The prefix is used as written: ``s3://b/logs/`` lists the folder, ``s3://b/logs/x.gz``
    one object (and any object whose key starts with it).

    Skipped: 0-byte objects (console "folders", empty Firehose flushes) and the
    ``aws-logs-write-test`` object CreateExportTask writes at the prefix root. Each
    ``InputRef.open()`` issues its own GetObject and streams the body.
    """
    try:
        bucket, _ = parse_s3_url(uri)
    except StorageError as error:
        raise InputError(error.message, hint=error.hint) from None
    prefix = uri[len("s3://") + len(bucket):].lstrip("/")
    config = config if config is not None else _default_config()
    s3_client = aws.client("s3", config)
    refs = []
    skipped = 0
    for item in iter_objects(s3_client, bucket, prefix):
        key = item["Key"]
        if key.endswith("/") or item.get("Size", 0) == 0 or key.rsplit("/", 1)[-1] == EXPORT_TEST_OBJECT:
            skipped += 1
            continue
        refs.append(InputRef(f"s3://{bucket}/{key}", (lambda key=key: open_object(s3_client, bucket, key)), item.get("Size")))
    if skipped:
        log.info("skipped %d empty or export-test objects below %s", skipped, uri)
    if not refs:
        raise InputError(f"no input objects below {uri}", hint="check the bucket, the prefix and the region")
    return sorted(refs, key=lambda ref: ref.name)


def open_workdir(url: str, config=None) -> S3Storage:
    """``pipeline.io.storage.open_storage`` of an s3:// URL."""
    return S3Storage(url, config)


def list_inputs(url: str, config=None) -> list[InputRef]:
    """``pipeline.io.storage.resolve_inputs`` of an s3:// prefix."""
    return list_s3_inputs(url, config)
