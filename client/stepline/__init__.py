"""stepline: a local metrics store for ML training, with run forking and rewinds.

``import stepline as wandb`` keeps ordinary W&B training scripts working::

    run = stepline.init(project="llm", config={"lr": 3e-4})
    run.log({"loss": 0.5})
    run.finish()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stepline import training
from stepline.api import Api, ApiRun
from stepline.errors import (
    DaemonError,
    DaemonUnavailable,
    Error,
    InUse,
    InvalidFork,
    InvalidResume,
    LimitExceeded,
    ProtocolError,
    RequestError,
    RunExists,
    RunNotFound,
    RunNotWritable,
    StepOrderError,
    StorageFull,
    Timeout,
    UsageError,
)
from stepline.training import Config, Run, Summary

__version__ = "0.1.0"

# The current run, as in W&B: set by init(), cleared by finish().
run: Run | None = None
config: Config | dict[str, Any] = {}
summary: Summary | dict[str, Any] = {}


def init(*args: Any, **kwargs: Any) -> Run:
    global run, config, summary
    r = training.init(*args, **kwargs)
    run, config, summary = r, r.config, r.summary
    return r


init.__doc__ = training.init.__doc__


def _current(what: str) -> Run:
    if run is None:
        raise UsageError(f"stepline.{what}() called before stepline.init()")
    return run


def log(data: Mapping[str, Any], step: int | None = None, commit: bool | None = None) -> None:
    _current("log").log(data, step=step, commit=commit)


def define_metric(
    name: str, step_metric: str | None = None, summary: str | None = None, **kw: Any
) -> None:
    _current("define_metric").define_metric(name, step_metric=step_metric, summary=summary, **kw)


def finish(exit_code: int = 0, timeout: float | None = training.DEFAULT_TIMEOUT) -> None:
    global run
    if run is not None:
        run.finish(exit_code=exit_code, timeout=timeout)
        run = None


__all__ = [
    "Api",
    "ApiRun",
    "Config",
    "DaemonError",
    "DaemonUnavailable",
    "Error",
    "InUse",
    "InvalidFork",
    "InvalidResume",
    "LimitExceeded",
    "ProtocolError",
    "RequestError",
    "Run",
    "RunExists",
    "RunNotFound",
    "RunNotWritable",
    "StepOrderError",
    "StorageFull",
    "Summary",
    "Timeout",
    "UsageError",
    "config",
    "define_metric",
    "finish",
    "init",
    "log",
    "run",
    "summary",
]
