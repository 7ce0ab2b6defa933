"""Errors, typed by who is at fault.

* :class:`UsageError`: the caller used the API wrongly (bad arguments, a value
  that cannot be logged). Raised locally, before anything is sent.
* :class:`RequestError`: the daemon refused a request because of what it asked
  for (unknown run, bad fork point, a step that goes backwards). The daemon
  keeps serving; the subclass and its ``code`` say why.
* :class:`ProtocolError`: a peer sent bytes that are not our protocol.
* :class:`DaemonError`: the daemon could not do something it should have been
  able to (disk full, internal failure). Not the caller's fault; retrying later
  may work.
* :class:`DaemonUnavailable` / :class:`Timeout`: transport problems.

Standard library bases are mixed in so ``except LookupError`` or
``except TimeoutError`` keep working for code that does not know stepline.
"""

from __future__ import annotations


class Error(Exception):
    """Base of every error stepline raises."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(Error, ValueError):
    code = "usage"


class ProtocolError(Error):
    """Bytes on the wire that do not follow the protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[str, str]]:
        # Crosses process boundaries (the daemon's read workers) intact.
        return type(self), (self.code, self.message)


class DaemonUnavailable(Error, ConnectionError):
    code = "unavailable"


class Timeout(Error, TimeoutError):
    code = "timeout"


class RequestError(Error):
    """The daemon refused a request; ``code`` is machine-readable."""

    code = "bad_request"


class RunNotFound(RequestError, LookupError):
    code = "not_found"


class RunExists(RequestError):
    code = "exists"


class InvalidFork(RequestError, ValueError):
    code = "invalid_fork"


class InvalidResume(RequestError, ValueError):
    code = "invalid_resume"


class StepOrderError(RequestError, ValueError):
    code = "step_order"


class RunNotWritable(RequestError):
    """A write to a run that is archived (rewound) or finished."""

    code = "not_writable"


class LimitExceeded(RequestError):
    """A configured limit of the daemon (runs per project, ...) was reached."""

    code = "limit"


class InUse(RequestError):
    """The request would break another run (a purge of rows a fork still reads)."""

    code = "in_use"


class SeqGap(RequestError):
    """A batch arrived before an earlier one of its run; the client resends in order."""

    code = "seq_gap"


class DaemonError(Error):
    code = "internal"


class StorageFull(DaemonError, OSError):
    code = "storage_full"


class ClusterUnavailable(DaemonError, ConnectionError):
    """The cluster store (ClickHouse) did not answer a read: not the caller's
    fault, and retrying later may work. The message names the server's address,
    never its password."""

    code = "cluster_unavailable"


_BY_CODE: dict[str, type[Error]] = {
    cls.code: cls
    for cls in (
        RequestError,
        RunNotFound,
        RunExists,
        InvalidFork,
        InvalidResume,
        StepOrderError,
        RunNotWritable,
        LimitExceeded,
        InUse,
        SeqGap,
        DaemonError,
        StorageFull,
        ClusterUnavailable,
    )
}


# Error codes after which the client keeps the batch and resends it later.
RETRYABLE = frozenset({SeqGap.code, DaemonError.code, StorageFull.code})


def from_reply(code: str, message: str) -> Error:
    """Rebuild the typed error a daemon ``error`` reply stands for."""
    if code in ("bad_frame", "frame_too_large", "unknown_op"):
        return ProtocolError(code, message)
    cls = _BY_CODE.get(code, RequestError)
    err = cls(message)
    err.code = code
    return err
