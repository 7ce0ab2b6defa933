"""What a project or run id may be: they end up in URLs, file names and log
lines, on every node and in the cluster."""

from __future__ import annotations

import re
from typing import Any

from stepline.errors import RequestError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NAME_RULE = "1-128 characters of letters, digits, '.', '_', '-'"


def check_project(project: Any) -> str:
    if not isinstance(project, str) or not NAME_RE.fullmatch(project):
        raise RequestError(f"project {project!r} is not valid: {_NAME_RULE}")
    return project


def check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not NAME_RE.fullmatch(run_id):
        raise RequestError(f"run id {run_id!r} is not valid: {_NAME_RULE}")
    return run_id
