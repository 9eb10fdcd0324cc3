"""Settings of the AWS backends: ``[s3]`` (object store) and ``[dynamodb]`` (state table).

Each names its bucket or table per region (a template with ``{region}``), an optional endpoint
URL (an S3-compatible store, a test server), and per-region overrides under
``[s3.regions.<region>]`` / ``[dynamodb.regions.<region>]``: another endpoint, the provider's
region name used to sign requests, a profile name. Credentials never come from ``mrbatch.toml``:
boto3's standard chain finds them (environment, shared profile, instance or task role).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["AwsTarget", "DynamoDBConfig", "S3Config"]

_URL = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(:\d{1,5})?/?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TABLE = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_PROVIDER_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_PROFILE = re.compile(r"^[A-Za-z0-9_.+=,@-]{1,128}$")
# Keys someone might write to give credentials: refused with a pointer to the standard chain.
_CREDENTIAL_KEYS = {
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "access_key",
    "access_key_id",
    "secret_key",
    "secret_access_key",
    "session_token",
    "password",
}


def _no_credentials(values: Any) -> Any:
    if isinstance(values, dict):
        for key in values:
            if str(key).lower() in _CREDENTIAL_KEYS:
                raise ValueError(
                    f"{key}: credentials are never read from mrbatch.toml; they come from the"
                    " standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE"
                    " and ~/.aws, an instance or task role)"
                )
    return values


def _endpoint(value: str | None) -> str | None:
    if value is not None and not _URL.match(value):
        raise ValueError(
            f"{value!r} is not an endpoint URL such as https://s3.example.com or"
            " http://127.0.0.1:5000 (scheme, host and port only)"
        )
    return value.rstrip("/") if value else value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_credentials(cls, values: Any) -> Any:
        return _no_credentials(values)


class _RegionOverride(_Section):
    """Where one region's bucket or table lives, when it differs from the section's default."""

    endpoint_url: str | None = None
    # The provider's region name requests are signed for (default: the mrbatch region name).
    aws_region: str | None = None
    # A profile name of the standard chain (~/.aws/config); never the credentials themselves.
    profile: str | None = None

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _endpoint(value)

    @field_validator("aws_region")
    @classmethod
    def _provider_region(cls, value: str | None) -> str | None:
        if value is not None and not _PROVIDER_REGION.match(value):
            raise ValueError(f"{value!r} is not a region name such as us-east-1")
        return value

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str | None) -> str | None:
        if value is not None and not _PROFILE.match(value):
            raise ValueError(f"{value!r} is not a profile name")
        return value


class AwsTarget(BaseModel):
    """Everything a backend needs to reach one region's bucket or table."""

    model_config = ConfigDict(frozen=True)

    name: str  # the bucket or the table
    endpoint_url: str | None
    aws_region: str
    profile: str | None


class _Service(_RegionOverride):
    def target(self, region: str, name: str, override: _RegionOverride | None) -> AwsTarget:
        return AwsTarget(
            name=name.replace("{region}", region),
            endpoint_url=(override and override.endpoint_url) or self.endpoint_url,
            aws_region=(override and override.aws_region) or self.aws_region or region,
            profile=(override and override.profile) or self.profile,
        )


class S3BucketOverride(_RegionOverride):
    bucket: str | None = None


class S3Config(_Service):
    """``[s3]``: one versioned bucket per region, created by ``mrbatch up`` when missing."""

    bucket: str = "mrbatch-{region}"
    # Objects larger than this are uploaded (and copied) in parts of part_size.
    multipart_threshold: int = Field(default=64 * 1024 * 1024, ge=5 * 1024 * 1024)
    part_size: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024, le=5 * 1024**3)
    # The completion mail also carries S3's own presigned URL of the output (besides the
    # gateway's link, which works from any region).
    presign_mail: bool = False
    regions: dict[str, S3BucketOverride] = Field(default_factory=dict)

    def for_region(self, region: str) -> AwsTarget:
        override = self.regions.get(region)
        return self.target(region, (override and override.bucket) or self.bucket, override)


class DynamoDBTableOverride(_RegionOverride):
    table: str | None = None


class DynamoDBConfig(_Service):
    """``[dynamodb]``: one table per region, created by ``mrbatch up`` when missing."""

    table: str = "mrbatch-{region}"
    regions: dict[str, DynamoDBTableOverride] = Field(default_factory=dict)

    def for_region(self, region: str) -> AwsTarget:
        override = self.regions.get(region)
        return self.target(region, (override and override.table) or self.table, override)


def check_names(config: Any) -> None:
    """Raise ValueError naming the key when a bucket or table name is invalid for a region, an
    override names a region that is not configured, or native replication is chosen for
    backends the provider cannot replicate."""
    backends = config.backends
    if backends.replication == "native" and (
        backends.object_store != "s3" or backends.state_table != "dynamodb"
    ):
        raise ValueError(
            "backends.replication: 'native' leaves the copying to S3 Cross-Region Replication"
            " and DynamoDB global tables; it needs object_store = 's3' and"
            " state_table = 'dynamodb'"
        )
    for section, pattern, field, what in (
        (config.s3, _BUCKET, "bucket", "a bucket name (3-63 lowercase letters, digits, '-', '.')"),
        (config.dynamodb, _TABLE, "table", "a table name (3-255 letters, digits, '_', '-', '.')"),
    ):
        label = "s3" if field == "bucket" else "dynamodb"
        for region in section.regions:
            if region not in config.regions:
                raise ValueError(f"{label}.regions.{region}: not one of the regions")
        for region in config.regions:
            name = section.for_region(region).name
            if not pattern.match(name):
                override = section.regions.get(region)
                key = (
                    f"{label}.regions.{region}.{field}"
                    if override is not None and getattr(override, field)
                    else f"{label}.{field}"
                )
                raise ValueError(f"{key}: {name!r} (region {region}) is not {what}")
