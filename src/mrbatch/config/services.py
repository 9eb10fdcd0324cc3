"""``[services.<name>]``: programs of the workspace's own that run beside the deployment (a
reference API a pipeline enriches from, say). ``mrbatch up`` starts each one in the workspace's
directory with its output in ``<data dir>/logs/service-<name>.log``, the supervisor restarts it
when it dies, as it restarts a region, and ``mrbatch down`` stops it."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from .values import Section

__all__ = ["ServiceConfig", "check_service_names"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class ServiceConfig(Section):
    # The program and its arguments, run as they are (no shell), from the workspace's directory.
    command: list[str] = Field(min_length=1)

    @field_validator("command")
    @classmethod
    def _no_empty_program(cls, command: list[str]) -> list[str]:
        if not command[0].strip():
            raise ValueError("the first item names the program to run: it is empty")
        return command


def check_service_names(services: dict[str, ServiceConfig]) -> dict[str, ServiceConfig]:
    bad = [name for name in services if not _NAME.match(name)]
    if bad:
        raise ValueError(
            f"service name {bad[0]!r}: use lower-case letters, digits, '-' and '_' (it names"
            " the service's pid and log files)"
        )
    return services
