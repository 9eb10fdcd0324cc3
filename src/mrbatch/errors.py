"""One root exception for everything mrbatch reports to a person.

Every error carries a stable ``code``, a one-line message and a ``hint`` telling the operator what
to do next. The CLI prints message and hint (never a traceback unless ``--debug``) and exits with
``exit_code``: 1 when an operation failed, 2 for usage or configuration errors.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConflictError",
    "FencedError",
    "InputError",
    "MrbatchError",
    "NotFoundError",
    "ReferenceDataError",
    "SafetyRuleError",
    "SchemaError",
    "TaskError",
    "UnavailableError",
    "UsageError",
    "UserCodeError",
]


class MrbatchError(Exception):
    """Root of every error mrbatch raises on purpose."""

    code = "mrbatch_error"
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross process boundaries (pool workers); keep the hint when pickled.
        return (self.__class__, (self.message,), {"hint": self.hint})


class UsageError(MrbatchError):
    """The command line asked for something that cannot be (unknown region, bad key...)."""

    code = "usage"
    exit_code = 2


class ConfigError(UsageError):
    """The configuration is invalid; the message names the file and the key."""

    code = "config"


class SchemaError(ConfigError):
    """The record schema (JSON Schema) uses a keyword or value mrbatch cannot enforce."""

    code = "schema"


class NotFoundError(MrbatchError):
    """An object, record or run does not exist where it was looked for."""

    code = "not_found"


class ConflictError(MrbatchError):
    """A conditional write lost: the record changed (or exists) since it was read."""

    code = "conflict"


class UnavailableError(MrbatchError):
    """A dependency (bucket, state table, control plane, mail server) cannot be reached now."""

    code = "unavailable"


class FencedError(MrbatchError):
    """This region is not ACTIVE in the run's epoch; it must not publish or notify."""

    code = "fenced"


class SafetyRuleError(MrbatchError):
    """A routing change was refused by a control-plane safety rule; nothing changed."""

    code = "safety_rule"


class TaskError(MrbatchError):
    """A task failed for a reason of its own (a dependency it calls misbehaved); retried with
    backoff up to the configured attempts."""

    code = "task_failed"


class InputError(MrbatchError):
    """An input file cannot be processed as a whole (empty, binary, missing column...).

    The run that met it ends FAILED with this message as its reason.
    """

    code = "input"


class ReferenceDataError(MrbatchError):
    """The enrichment reference data is missing or unusable (0 rows, duplicate keys...)."""

    code = "reference_data"


class UserCodeError(MrbatchError):
    """A pipeline's own code (a row check, a transform) raised, did not return in time or
    returned something unusable; or the pipeline's code or configuration changed under a run.
    A fact about the rules: the run fails at once with this reason (never retried)."""

    code = "user_code"
