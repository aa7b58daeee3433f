"""The one place that makes AWS clients and turns AWS failures into one-line errors.

Clients are made when a stage needs one, never at import time, so tests and runs
never share a client by accident. The endpoint is never set here: botocore reads
``AWS_ENDPOINT_URL`` (and ``AWS_ENDPOINT_URL_<SERVICE>``) itself, which is how the
tests point every client at a local moto server. Region and profile come from the
configuration when set, else from the usual AWS environment and config files.
Retries use botocore's adaptive mode (exponential backoff plus client-side rate
limiting on throttling) with ``aws.max_attempts`` attempts in total, the first one
included: botocore's ``total_max_attempts``, like ``AWS_MAX_ATTEMPTS`` (its
``max_attempts`` key would count retries only, one attempt more).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import botocore.loaders
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError, ProfileNotFound

from pipeline.errors import AwsCallError, ConfigError

_PERMISSION_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError", "403"}
_THROTTLE_CODES = {"ThrottlingException", "Throttling", "ThrottledException", "TooManyRequestsException",
                   "RequestLimitExceeded", "SlowDown", "LimitExceededException"}
_CREDENTIAL_CODES = {"ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException",
                     "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_S3_ACTIONS = {"HeadObject": "s3:GetObject", "ListObjectsV2": "s3:ListBucket", "DeleteObjects": "s3:DeleteObject"}
_loader = None


def _data_loader():
    """The service-model loader, shared: parsing a model costs ~0.1 s per client, and models never change."""
    global _loader
    if _loader is None:
        _loader = botocore.loaders.create_loader()
    return _loader


def client(service: str, config=None, region: str | None = None):
    """A client for ``service`` (what ``boto3.client`` returns) with the configured region, profile and retries.

    Each call builds a fresh session, so credentials and settings are resolved anew and
    nothing but the parsed service models is shared. ``region`` overrides
    ``config.aws.region`` (SageMaker may run in its own region).
    """
    aws = config.aws if config is not None else None
    max_attempts = aws.max_attempts if aws is not None else 10
    try:
        session = botocore.session.Session(profile=aws.profile if aws is not None else None)
        session.register_component("data_loader", _data_loader())
        return session.create_client(
            service,
            region_name=region or (aws.region if aws is not None else None),
            config=BotoConfig(retries={"mode": "adaptive", "total_max_attempts": max_attempts}),
        )
    except ProfileNotFound as error:
        raise ConfigError(f"AWS profile not found: {error.kwargs.get('profile')}",
                          hint="fix aws.profile in the config or AWS_PROFILE, or use ~/.aws/config") from None
    except NoRegionError:
        raise ConfigError(f"no AWS region for {service}",
                          hint="set aws.region in the config or AWS_REGION / AWS_DEFAULT_REGION") from None


def operation_label(client_method: Callable) -> tuple[str, str, str]:
    """(Service label, operation name, IAM action) of a bound client method, e.g. ('S3', 'PutObject', 's3:PutObject')."""
    meta = client_method.__self__.meta
    operation = meta.method_to_api_mapping.get(client_method.__name__, client_method.__name__)
    service = meta.service_model.service_id.replace(" ", "")
    action = _S3_ACTIONS.get(operation) if meta.service_model.signing_name == "s3" else None
    return service, operation, action or f"{meta.service_model.signing_name}:{operation}"


def _hint(code: str, action: str, attempts: int | None) -> str:
    if code in _PERMISSION_CODES:
        return f"grant {action} on this resource to the caller (docs/aws.md lists each command's permissions)"
    if code in _THROTTLE_CODES:
        return f"still throttled after {attempts or 'all'} attempts: run later or raise aws.max_attempts"
    if code in _CREDENTIAL_CODES:
        return "refresh the AWS credentials (aws sso login, or new keys) and check the profile/region"
    if code.startswith("NoSuch") or code in ("ResourceNotFoundException", "404"):
        return "check the name, the region and that the resource exists"
    return "see the AWS message; rerun is safe (stages are idempotent)"


def aws_error(error: Exception, client_method: Callable, what: str = "") -> AwsCallError:
    """The one-line ``AwsCallError`` for a final botocore failure of ``client_method``."""
    service, operation, action = operation_label(client_method)
    where = f" ({what})" if what else ""
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code") or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "Unknown"))
        message = " ".join(str(info.get("Message") or "").split())
        attempts = error.response.get("ResponseMetadata", {}).get("RetryAttempts")
        total = attempts + 1 if isinstance(attempts, int) else None
        return AwsCallError(f"{service}.{operation} failed{where}: {code}: {message}".rstrip(": "), hint=_hint(code, action, total))
    if isinstance(error, NoCredentialsError):
        return AwsCallError(f"{service}.{operation} failed{where}: no AWS credentials found",
                            hint="set AWS_PROFILE (or aws.profile) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    text = " ".join(str(error).split())
    return AwsCallError(f"{service}.{operation} failed{where}: {type(error).__name__}: {text}",
                        hint="check network access to AWS, the region and AWS_ENDPOINT_URL if set")


def call(client_method: Callable, what: str = "", **kwargs) -> dict[str, Any]:
    """Call ``client_method(**kwargs)``; a failure left after botocore's retries becomes one ``AwsCallError``.

    ``what`` names the resource for the message (a bucket/key, a log group, a job).
    Nothing is swallowed: every failure raises.
    """
    try:
        return client_method(**kwargs)
    except (ClientError, BotoCoreError) as error:
        raise aws_error(error, client_method, what) from None


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def paginate(client_method: Callable, what: str = "", **kwargs) -> Iterator[dict[str, Any]]:
    """Pages of a paginated operation, with failures turned into ``AwsCallError`` like ``call``."""
    paginator = client_method.__self__.get_paginator(client_method.__name__)
    pages = paginator.paginate(**kwargs)
    iterator = iter(pages)
    while True:
        try:
            page = next(iterator)
        except StopIteration:
            return
        except (ClientError, BotoCoreError) as error:
            raise aws_error(error, client_method, what) from None
        yield page
