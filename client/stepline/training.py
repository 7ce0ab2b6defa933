"""``init`` and the :class:`Run` it returns: the training script's side of stepline."""

from __future__ import annotations

import atexit
import os
import re
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack

from stepline import offline, paths, protocol
from stepline.autostart import enabled as autostart_enabled
from stepline.autostart import ensure_daemon
from stepline.errors import (
    DaemonUnavailable,
    Error,
    InvalidFork,
    InvalidResume,
    Timeout,
    UsageError,
)
from stepline.offline import OfflineSender
from stepline.rows import MAX_ROW_BYTES, StepTracker, plain_value_problem
from stepline.sender import Sender
from stepline.settings import ClientSettings

DEFAULT_TIMEOUT = 30.0
_REF_RE = re.compile(r"^(?P<id>[^?]+)\?_step=(?P<step>\d+)$")

_senders: dict[Path, Sender] = {}
_senders_lock = threading.Lock()
_live_runs: weakref.WeakSet[Run] = weakref.WeakSet()
# Bumped in a forked child, so runs inherited from the parent pick up a fresh sender.
_fork_generation = 0
# Set by SIGTERM: runs are being finished and the process is about to end.
_terminating = False


def _sender(path: Path) -> Sender:
    """The process's sender for ``path``."""
    with _senders_lock:
        s = _senders.get(path)
        if s is None:
            s = _senders[path] = Sender(path, ClientSettings.from_env())
        return s


def _reset_after_fork() -> None:
    # The child must never write to the parent's connection: its senders are
    # rebuilt on first use. Locks another parent thread held at fork time would
    # never be released here, so they are replaced. Inherited runs belong to the
    # parent: the child's exit must not finish them.
    global _senders_lock, _fork_generation
    _senders.clear()
    _senders_lock = threading.Lock()
    _fork_generation += 1
    for run in list(_live_runs):
        run._lock = threading.RLock()
    _live_runs.clear()


os.register_at_fork(after_in_child=_reset_after_fork)

# Largest config or summary update; the rest of a frame is headroom.
MAX_UPDATE_BYTES = protocol.MAX_FRAME_SIZE // 2


def parse_ref(ref: str, what: str, error: type[InvalidFork] | type[InvalidResume]) -> list[Any]:
    """``"RUNID?_step=N"`` -> ``[RUNID, N]``; only ``_step`` is a valid fork metric."""
    if not isinstance(ref, str):
        raise error(f"{what} must be a string like 'RUNID?_step=N', got {type(ref).__name__}")
    m = _REF_RE.match(ref)
    if m is None:
        if "?" in ref and not ref.split("?", 1)[1].startswith("_step="):
            metric = ref.split("?", 1)[1].split("=", 1)[0]
            raise error(f"{what}: only '_step' can be used as the fork metric, not {metric!r}")
        raise error(f"{what} must look like 'RUNID?_step=N', got {ref!r}")
    return [m["id"], int(m["step"])]


def _check_packable(value: Any, what: str) -> None:
    try:
        packed = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # lone surrogates too
        raise TypeError(f"{what}: value cannot be stored: {exc}") from None
    size = len(packed)
    # What the daemon stores must read back as JSON: no bytes, no ext types, no
    # int keys (msgpack takes them all; tuples arrive as lists, which is fine).
    why = plain_value_problem(msgpack.unpackb(packed, strict_map_key=False))
    if why is not None:
        raise TypeError(f"{what}: value cannot be stored: {why}")
    if size > MAX_UPDATE_BYTES:
        raise ValueError(f"{what}: {size} bytes is over the {MAX_UPDATE_BYTES}-byte limit")


class _Synced(dict[str, Any]):
    """A dict whose changes go to the daemon as one update, ordered with the rows."""

    _op = ""

    def __init__(self, run: Run, data: Mapping[str, Any]) -> None:
        super().__init__(data)  # the initial contents came from, or go with, init
        object.__setattr__(self, "_run", run)

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        data = dict(*args, **kwargs)
        _check_packable(data, self._op)
        super().update(data)
        object.__getattribute__(self, "_run")._send_op({"op": self._op, self._op: data})


class Config(_Synced):
    """The run's config. Attribute access works too (``run.config.lr``), as in W&B."""

    _op = "config"

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class Summary(_Synced):
    """Explicit summary values; they win over the values derived from history."""

    _op = "summary"


class Run:
    """A run being logged. Thread-safe: many threads may ``log`` to one run."""

    def __init__(self, sender: Sender, info: dict[str, Any]) -> None:
        self._sender_ = sender
        self._generation = _fork_generation
        self._run_no: int = info["run_no"]
        self.id: str = info["id"]
        self.project: str = info["project"]
        self.name: str = info["name"]
        self.start_step: int = info["start_step"]
        self.resumed_how: str = info["how"]
        # Re-entrant: a signal handler calling finish() may interrupt log() on
        # the same thread (the usual preemption handler).
        self._lock = threading.RLock()
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._tracker = StepTracker(self.start_step, self._emit, time.time(), self.id)
        self._finished = False
        self._overflow = 0
        self.config = Config(self, info.get("config") or {})
        self.summary = Summary(self, {})

    # -------------------------------------------------------------- logging

    def log(
        self, data: Mapping[str, Any], step: int | None = None, commit: bool | None = None
    ) -> None:
        """Log metrics. No I/O: rows are queued for the background sender."""
        if self._finished:
            if _terminating:
                return  # SIGTERM finished the run; the process is about to end
            raise UsageError(f"run {self.id!r} is finished; log() after finish() is not allowed")
        with self._lock:
            self._tracker.log(data, step, commit)

    def _emit(self, step: int, row: dict[str, Any]) -> None:
        # Packed here, once, on the caller's thread (under the run's lock, so one
        # Packer per run is safe): the sender thread then frames whole batches in
        # one C call and never holds the GIL long against the training loop.
        packed = self._pack(row)
        if len(packed) > MAX_ROW_BYTES:
            raise ValueError(
                f"log(): the row at step {step} is {len(packed)} bytes, over the {MAX_ROW_BYTES}-byte "
                "limit; it is dropped and the step is not used"
            )
        if not self._sender.add_row(self._run_no, step, packed):
            self._overflow += 1  # the buffer was full and the policy dropped it
            if self._overflow == 1:
                warnings.warn(
                    f"stepline: run {self.id!r}: the client buffer is full; rows are being "
                    f"dropped ({self._sender.settings.overflow} policy) and counted",
                    RuntimeWarning,
                    stacklevel=4,
                )

    @property
    def _sender(self) -> Sender:
        if self._generation != _fork_generation:
            # In a forked child: use the child's own sender (new client id).
            self._sender_ = _sender(self._sender_.path)
            self._generation = _fork_generation
        return self._sender_

    @property
    def step(self) -> int:
        """The step the next committed row will get."""
        return self._tracker.step

    @property
    def dropped(self) -> int:
        """Rows dropped because their step was behind the current one."""
        return self._tracker.dropped

    def define_metric(
        self, name: str, step_metric: str | None = None, summary: str | None = None, **_: Any
    ) -> None:
        """Choose how ``name``'s summary is derived: min, max, mean, first, last or none.

        ``step_metric`` and W&B's other options are accepted and ignored: every
        stepline row is indexed by ``_step``.
        """
        if not isinstance(name, str) or not name:
            raise UsageError("define_metric: name must be a non-empty string")
        try:
            name.encode()
        except UnicodeEncodeError:
            raise UsageError(f"define_metric: name {name!r} is not valid unicode") from None
        if summary is not None:
            modes = [m.strip() for m in summary.split(",") if m.strip()]
            allowed = {"min", "max", "mean", "first", "last", "none"}
            if len(modes) != 1 or modes[0] not in allowed:
                raise UsageError(
                    f"define_metric: summary must be one of {sorted(allowed)}, got {summary!r}"
                )
            self._send_op({"op": "metric", "name": name, "summary": modes[0]})

    def _send_op(self, op: dict[str, Any]) -> None:
        if self._finished:
            raise UsageError(f"run {self.id!r} is finished")
        with self._lock:
            # Ordered after every row committed so far.
            self._sender.add_op(self._run_no, op)

    # ------------------------------------------------------------ lifecycle

    def flush(self, timeout: float | None = None) -> None:
        """Return once every row logged before this call is durable at the daemon."""
        self._sender.flush(timeout)

    def finish(self, exit_code: int = 0, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Commit any pending row, mark the run finished (failed if exit_code != 0), flush.

        Never waits longer than ``timeout``; if the daemon has not acknowledged
        everything by then, a warning says so and the rows stay queued.
        """
        if self._finished:
            return
        with self._lock:
            self._tracker.flush_pending()
            self._sender.add_op(
                self._run_no,
                {
                    "op": "finish",
                    "exit_code": int(exit_code),
                    "dropped": self._tracker.dropped + self._overflow,
                },
            )
            self._finished = True
        _live_runs.discard(self)
        try:
            self._sender.flush(timeout)
        except (Timeout, DaemonUnavailable) as exc:
            warnings.warn(f"stepline: finish({self.id!r}): {exc}", RuntimeWarning, stacklevel=2)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    def __repr__(self) -> str:
        return f"<stepline.Run {self.project}/{self.id} step={self.step}>"


def init(
    project: str | None = None,
    id: str | None = None,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    fork_from: str | None = None,
    resume_from: str | None = None,
    resume: str | bool | None = None,
    socket: str | os.PathLike[str] | None = None,
    tags: list[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    autostart: bool | None = None,
    mode: str | None = None,
    **_ignored: Any,
) -> Run:
    """Start a run (or fork, rewind or resume one) and return it.

    When no daemon listens on the socket, one is started (detached, on the
    default data dir, logging to ``daemon.log`` there) unless ``autostart=False``
    or ``STEPLINE_AUTOSTART=0``. Unknown W&B keyword arguments (``entity``,
    ``reinit``, ...) are accepted and ignored so W&B scripts run unchanged.

    ``mode="offline"`` (or ``STEPLINE_MODE=offline``) records the run to a file
    under the XDG state dir instead; ``stepline sync`` delivers it later.
    """
    project = project or "uncategorized"
    resume = _resume_mode(id, fork_from, resume_from, resume)
    msg = _init_request(project, id, name, config, tags, resume, fork_from, resume_from)
    sender = _open_sender(
        mode, project, msg, paths.resolve_socket(socket), autostart=autostart, timeout=timeout
    )
    info = sender.request(msg, timeout)
    run = Run(sender, info)  # type: ignore[arg-type]
    _live_runs.add(run)
    _flush_on_sigterm()
    return run


def _resume_mode(
    id: str | None, fork_from: str | None, resume_from: str | None, resume: str | bool | None
) -> str | None:
    """``resume`` as the wire has it (allow, must, never or absent), checked against
    the other ways init can start from an existing run."""
    if fork_from is not None and (resume is not None or resume_from is not None):
        raise InvalidFork("fork_from cannot be combined with resume or resume_from")
    if resume_from is not None and resume is not None:
        raise InvalidResume("resume_from cannot be combined with resume")
    if resume is True:
        resume = "allow"
    elif resume is False:
        resume = None
    if resume is not None and resume not in ("allow", "must", "never"):
        raise UsageError(f"resume must be 'allow', 'must', 'never', True or False, got {resume!r}")
    if resume in ("allow", "must") and id is None:
        raise UsageError(f"resume={resume!r} needs the id of the run to resume")
    return resume


def _init_request(
    project: str,
    id: str | None,
    name: str | None,
    config: Mapping[str, Any] | None,
    tags: list[str] | None,
    resume: str | None,
    fork_from: str | None,
    resume_from: str | None,
) -> dict[str, Any]:
    """The ``init`` message, every part of it checked to be storable."""
    cfg = dict(config or {})
    _check_packable(cfg, "config")
    # The token makes init safe to resend: if the daemon made the run but its
    # reply was lost (it crashed, or restarted), the resend gets that same run.
    msg: dict[str, Any] = {"op": "init", "token": protocol.new_token(), "project": project}
    msg["config"] = cfg
    if id is not None:
        msg["id"] = id
    if name is not None:
        msg["name"] = name
    if tags:
        msg["tags"] = list(tags)
    if resume is not None:
        msg["resume"] = resume
    if fork_from is not None:
        msg["fork_from"] = parse_ref(fork_from, "fork_from", InvalidFork)
        if id is not None and msg["fork_from"][0] == id:
            raise InvalidFork(f"fork_from: the child id {id!r} is the parent's own id")
    if resume_from is not None:
        msg["resume_from"] = parse_ref(resume_from, "resume_from", InvalidResume)
    # Encoded here, on the caller's thread, so a bad name or tag raises at this
    # call and never in the sender, where other runs' rows wait to be sent.
    _check_packable({k: v for k, v in msg.items() if k != "config"}, "init")
    return msg


def _open_sender(
    mode: str | None,
    project: str,
    msg: dict[str, Any],
    path: Path,
    *,
    autostart: bool | None,
    timeout: float,
) -> Sender | OfflineSender:
    """A new offline file for the run, or the process's sender to the daemon at
    ``path`` (started first if need be and allowed)."""
    mode = mode or os.environ.get("STEPLINE_MODE") or "online"
    if mode == "offline":
        offline.check_init(msg)
        settings = ClientSettings.from_env()
        filename = (
            f"{project}-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(4).hex()}{offline.SUFFIX}"
        )
        return OfflineSender(offline.offline_dir(settings) / filename, path, settings)
    if mode == "online":
        if autostart_enabled(autostart):
            ensure_daemon(path, timeout)
        return _sender(path)
    raise UsageError(f"mode must be 'online' or 'offline', got {mode!r}")


EXIT_FLUSH_TIMEOUT = 10.0


def _finish_live_runs(exit_code: int = 0) -> None:
    # W&B finishes runs at interpreter exit; so do we, within one overall deadline.
    # Then every sender flushes, which covers rows a forked child logged to runs
    # it does not own.
    deadline = time.monotonic() + EXIT_FLUSH_TIMEOUT
    for run in list(_live_runs):
        run.finish(exit_code=exit_code, timeout=max(0.0, deadline - time.monotonic()))
    for sender in list(_senders.values()):
        try:
            sender.flush(timeout=max(0.0, deadline - time.monotonic()))
        except Error as exc:
            warnings.warn(f"stepline: at exit: {exc}", RuntimeWarning, stacklevel=1)


atexit.register(_finish_live_runs)


def _flush_on_sigterm() -> None:
    """SIGTERM (a scheduler preempting the job) would kill the process before
    ``atexit``: finish the live runs as failed within the exit deadline, then die
    of the signal as before. Only when nobody else handles SIGTERM, and only from
    the main thread, where Python allows it. SIGINT needs nothing: it raises
    KeyboardInterrupt, and the exit path finishes the runs."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: object) -> None:
    # The handler runs on the main thread wherever it was interrupted, perhaps
    # inside log() holding the sender's lock: the work goes to a thread, which
    # takes the locks once the main thread lets go of them.
    global _terminating
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM kills at once
    _terminating = True
    threading.Thread(target=_terminate, args=(signum,), name="stepline-sigterm").start()


def _terminate(signum: int) -> None:
    _finish_live_runs(exit_code=128 + signum)
    os.kill(os.getpid(), signum)  # die of the signal, as without stepline
