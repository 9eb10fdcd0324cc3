"""What the S3 and DynamoDB backends share: clients and the translation of their errors.

Clients are made once per process for each (service, endpoint, signing region, profile) and
shared by every store and table opened on them (boto3 clients are thread-safe; making one costs
tens of milliseconds). Credentials come only from boto3's standard chain: environment, shared
profile (a profile *name* may be configured), instance or task role. A custom endpoint (an
S3-compatible store, a test server) is addressed path-style, and checksums are sent only where
the service requires them or mrbatch supplies its own (SHA-256), which S3-compatible stores
accept.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions as bx
from botocore.config import Config as BotoConfig

from ..config.aws import AwsTarget
from ..errors import ConfigError, NotFoundError, UnavailableError

__all__ = ["client", "code", "create_bucket", "create_table", "guard", "status"]

# When set, every process appends one line per request to this file: time, pid, service,
# operation, milliseconds (the benchmark counts requests per file with it).
TRACE_ENV = "MRBATCH_AWS_TRACE"
_CLIENTS: dict[tuple[str, str | None, str, str | None], Any] = {}
_LOCK = threading.Lock()

# Error codes that mean "that thing does not exist" (the key, that version, that item).
NOT_FOUND = {"NoSuchKey", "NoSuchVersion", "404", "NotFound"}
# Error codes that mean "the service cannot do it now": the caller retries later.
UNAVAILABLE = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "InternalServerError",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "TransactionInProgressException",
}
# The bucket or table is missing (not created yet, or the endpoint lost its data).
MISSING = {"NoSuchBucket", "ResourceNotFoundException"}
DENIED = {
    "AccessDenied",
    "AccessDeniedException",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
}


def client(service: str, target: AwsTarget) -> Any:
    """The boto3 client of ``service`` for ``target`` (shared within the process)."""
    ident = (service, target.endpoint_url, target.aws_region, target.profile)
    with _LOCK:
        made = _CLIENTS.get(ident)
        if made is None:
            try:
                session = boto3.session.Session(profile_name=target.profile)
            except bx.ProfileNotFound as exc:
                raise ConfigError(
                    f"{service}: profile {target.profile!r} is not in the AWS configuration",
                    hint="name a profile of ~/.aws/config, or remove `profile`",
                ) from exc
            config = BotoConfig(
                region_name=target.aws_region,
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=32,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path" if target.endpoint_url else "auto"},
                # SigV4 everywhere, presigned URLs included (SigV2 is refused by newer regions).
                signature_version="s3v4" if service == "s3" else None,
            )
            made = session.client(service, endpoint_url=target.endpoint_url, config=config)
            if os.environ.get(TRACE_ENV):
                _trace(made, os.environ[TRACE_ENV])
            _CLIENTS[ident] = made
        return made


def _trace(made: Any, path: str) -> None:
    role = "/".join(a.rsplit("/", 1)[-1] for a in sys.argv[:3]).replace(" ", "_")

    def before(context: dict[str, Any], **_: Any) -> None:
        context["mrbatch_started"] = time.perf_counter()

    def after(model: Any, context: dict[str, Any], **_: Any) -> None:
        took = (time.perf_counter() - context.get("mrbatch_started", time.perf_counter())) * 1000
        line = f"{time.time():.3f} {os.getpid()} {model.service_model.service_name}"
        line += f" {model.name} {took:.1f} {role}\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    made.meta.events.register("before-call.*.*", before)
    made.meta.events.register("after-call.*.*", after)


def code(exc: BaseException) -> str:
    """The service's error code of a ClientError ('' for anything else)."""
    if isinstance(exc, bx.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def status(exc: BaseException) -> int:
    """The HTTP status of a ClientError (0 for anything else)."""
    if isinstance(exc, bx.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


@contextlib.contextmanager
def guard(where: str, what: str) -> Iterator[None]:
    """Translate boto errors into mrbatch's: NotFoundError for a missing key or version,
    UnavailableError for anything a retry may cure (the endpoint unreachable, throttling,
    5xx, a missing bucket or table, refused credentials), ConfigError for missing
    credentials. Other ClientErrors (412, conditional checks) pass through to the caller."""
    try:
        yield
    except bx.NoCredentialsError as exc:
        raise ConfigError(
            f"{where}: no AWS credentials",
            hint="credentials come from the standard chain: AWS_ACCESS_KEY_ID and"
            " AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance or task role",
        ) from exc
    except (bx.EndpointConnectionError, bx.ConnectionError, bx.HTTPClientError) as exc:
        raise UnavailableError(f"{where}: {what} cannot be reached: {exc}") from exc
    except bx.ClientError as exc:
        name = code(exc)
        if name in NOT_FOUND or (status(exc) == 404 and name not in MISSING):
            raise NotFoundError(f"{where}: no {what}") from exc
        if name in MISSING:
            raise UnavailableError(
                f"{where}: {what}: {name}", hint="`mrbatch up` creates missing buckets and tables"
            ) from exc
        if name in DENIED:
            raise UnavailableError(
                f"{where}: {what}: {name}",
                hint="check the credentials of the standard AWS chain and the IAM policy"
                " (examples/aws/)",
            ) from exc
        if name in UNAVAILABLE or status(exc) >= 500:
            raise UnavailableError(f"{where}: {what}: {name or status(exc)}") from exc
        raise


def create_bucket(target: AwsTarget, region: str) -> str:
    """Create ``target``'s bucket with versioning on when it is missing; says what it did."""
    s3 = client("s3", target)
    with guard(f"{region}: bucket {target.name}", "the bucket"):
        try:
            s3.head_bucket(Bucket=target.name)
            made = False
        except bx.ClientError as exc:
            if code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            args: dict[str, Any] = {}
            if target.aws_region != "us-east-1":
                args["CreateBucketConfiguration"] = {"LocationConstraint": target.aws_region}
            s3.create_bucket(Bucket=target.name, **args)
            made = True
        if s3.get_bucket_versioning(Bucket=target.name).get("Status") != "Enabled":
            s3.put_bucket_versioning(
                Bucket=target.name, VersioningConfiguration={"Status": "Enabled"}
            )
    return f"bucket {target.name} ({'created' if made else 'exists'}, versioned)"


def create_table(target: AwsTarget, region: str) -> str:
    """Create ``target``'s table (keys ``p`` and ``s``, on-demand capacity) when it is
    missing; says what it did."""
    db = client("dynamodb", target)
    with guard(f"{region}: table {target.name}", "the table"):
        try:
            db.describe_table(TableName=target.name)
            return f"table {target.name} (exists)"
        except bx.ClientError as exc:
            if code(exc) != "ResourceNotFoundException":
                raise
        db.create_table(
            TableName=target.name,
            KeySchema=[
                {"AttributeName": "p", "KeyType": "HASH"},
                {"AttributeName": "s", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "p", "AttributeType": "S"},
                {"AttributeName": "s", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        db.get_waiter("table_exists").wait(
            TableName=target.name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
    return f"table {target.name} (created)"
