"""What a history row may hold, and W&B's step semantics. Pure: no I/O, no threads.

``flatten`` turns what a user passes to ``log()`` into a flat ``{str: scalar}``
map or raises at once; :class:`StepTracker` decides, call by call, which rows
are committed at which step, exactly as W&B does, and hands committed rows to a
sink. The daemon checks what arrives on the wire against the same limits
(``stepline_daemon.batches``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

# One row larger than this is refused at the log() call. W&B's own history rows
# are capped in the same range; anything bigger is a media blob, not a metric.
MAX_ROW_BYTES = 1024 * 1024
MAX_KEYS_PER_ROW = 10_000
# Keys every committed row carries besides the user's; the daemon allows for them.
RESERVED_KEYS = ("_timestamp", "_runtime")
MAX_KEY_LEN = 256

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
STEP_MAX = (1 << 63) - 1

Scalar = int | float | bool | str | None
Row = dict[str, Scalar]


_ARRAY_MODULES = frozenset({"numpy", "torch"})


def _scalar(key: str, value: Any) -> Scalar:
    t = type(value)
    if t is float or t is str or t is bool or value is None:
        return value  # type: ignore[no-any-return]
    if t is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"log(): integer for {key!r} does not fit in 64 bits: {value}")
        return value  # type: ignore[no-any-return]
    # numpy scalars and 0-d arrays, torch 0-d tensors: recognised by module, never
    # imported; each has .item() returning the matching Python scalar.
    if t.__module__ in _ARRAY_MODULES and hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return _scalar(key, value.item())
    if isinstance(value, (int, float, str)):  # subclasses such as IntEnum
        return _scalar(key, _base(value))
    raise TypeError(
        f"log(): value for {key!r} has type {t.__name__}; "
        "expected int, float, bool, str, None or a numpy scalar"
    )


def _base(value: int | float | str) -> Scalar:
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _plain(data: dict[Any, Any]) -> bool:
    """Whether ``data`` is already a valid flat row: the common case, checked fast.

    Plain type identity tests only (no ABC ``isinstance``), floats first: this runs
    on the training thread for every ``log()`` call.
    """
    if len(data) > MAX_KEYS_PER_ROW or "_step" in data:
        return False
    for k, v in data.items():
        t = type(v)
        if not (
            t is float
            or t is str
            or v is None
            or t is bool
            or (t is int and _INT_MIN <= v <= _INT_MAX)
        ):
            return False
        if type(k) is not str or not 0 < len(k) <= MAX_KEY_LEN:
            return False
    return True


def flatten(data: Any, into: Row | None = None) -> Row:
    """Validate ``data`` and flatten nested mappings to dotted keys.

    A flat row of plain scalars is returned as is, not copied: callers copy it
    into their own row before changing anything.
    """
    if into is None and type(data) is dict and _plain(data):
        return data
    if not isinstance(data, Mapping):
        raise TypeError(
            f"log() takes a mapping of metric names to values, not {type(data).__name__}"
        )
    out: Row = {} if into is None else into
    _flatten(data, "", out)
    if len(out) > MAX_KEYS_PER_ROW:
        raise ValueError(f"log(): a row has {len(out)} keys; the maximum is {MAX_KEYS_PER_ROW}")
    return out


def _flatten(data: Mapping[Any, Any], prefix: str, out: Row) -> None:
    for key, value in data.items():
        if type(key) is not str:
            raise TypeError(f"log(): keys must be str, got {type(key).__name__} {key!r}")
        name = prefix + key
        if isinstance(value, Mapping):
            _flatten(value, name + ".", out)
            continue
        if name == "_step":
            continue  # W&B ignores a user-supplied _step; the step is ours
        if not name:
            raise ValueError("log(): the empty string is not a valid key")
        if len(name) > MAX_KEY_LEN:
            raise ValueError(f"log(): key {name[:40]!r}... is longer than {MAX_KEY_LEN} characters")
        out[name] = _scalar(name, value)


Sink = Callable[[int, Row], None]
_now = time.time


def _as_step(step: Any) -> int:
    """A step given as a non-int: numpy integers and other ``__index__`` types work."""
    if isinstance(step, bool) or not hasattr(step, "__index__"):
        raise TypeError(f"log(): step must be an int, got {type(step).__name__}")
    return int(step)


class StepTracker:
    """W&B's ``log(data, step=, commit=)`` rules, with committed rows sent to ``sink``.

    * ``log(d)``: merge ``d`` into the pending row, commit it at the current
      step, advance.
    * ``log(d, commit=False)``: merge only.
    * ``log(d, step=s)``: ``commit`` defaults to False. ``s`` ahead of the
      current step commits what is pending first; ``s`` equal merges; ``s``
      behind drops the data, warns once per run and counts it.
    """

    def __init__(self, start_step: int, sink: Sink, start_time: float, label: str) -> None:
        self.step = start_step
        self.dropped = 0
        self._pending: Row = {}
        self._sink = sink
        self._start = start_time
        self._label = label
        self._warned = False

    def log(self, data: Any, step: int | None = None, commit: bool | None = None) -> None:
        # Hot path: runs for every log() call on the training thread. Validate
        # everything before touching any state, with as few calls as possible.
        row = data if type(data) is dict and _plain(data) else flatten(data)
        if step is None:
            do_commit = commit is None or bool(commit)
        else:
            if type(step) is not int:
                step = _as_step(step)
            if step < 0 or step > STEP_MAX:
                raise ValueError(f"log(): step {step} is outside [0, 2**63)")
            if step != self.step:
                if step < self.step:
                    self._drop(step)
                    return
                if self._pending:
                    self._commit()
                self.step = step
            do_commit = bool(commit)
        pending = self._pending
        if pending:
            if len(pending) + len(row) > MAX_KEYS_PER_ROW:  # cheap bound first
                self._check_merged_size(row)
            pending.update(row)
        else:
            pending = self._pending = row.copy()
        now = _now()
        pending["_timestamp"] = now
        pending["_runtime"] = now - self._start
        if do_commit:
            self._commit()

    def _drop(self, step: int) -> None:
        self.dropped += 1
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"stepline: run {self._label}: log() at step {step} is behind the "
                f"current step {self.step}; the data is dropped (W&B semantics). "
                "Further drops in this run are counted, not warned.",
                RuntimeWarning,
                stacklevel=4,
            )

    def _check_merged_size(self, row: Row) -> None:
        pending = self._pending
        merged = len(pending.keys() | row.keys()) - sum(k in pending for k in RESERVED_KEYS)
        if merged > MAX_KEYS_PER_ROW:
            raise ValueError(
                f"log(): the row at step {self.step} would have {merged} keys; "
                f"the maximum is {MAX_KEYS_PER_ROW}"
            )

    def flush_pending(self) -> None:
        """Commit a pending row, as ``finish()`` does."""
        self._commit()

    def _commit(self) -> None:
        if not self._pending:
            return
        row, self._pending = self._pending, {}
        self._sink(self.step, row)
        self.step += 1


PLAIN_DEPTH = 64


def plain_value_problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` is not plain data (nil, bool, int, float, str, lists and
    str-keyed maps, at most ``PLAIN_DEPTH`` deep): what JSON and every reader
    can take back. None when it is."""
    if depth > PLAIN_DEPTH:
        return f"nested more than {PLAIN_DEPTH} deep"
    t = type(value)
    if value is None or t in (bool, int, float, str):
        return None
    if t is list:
        for item in value:
            if (why := plain_value_problem(item, depth + 1)) is not None:
                return why
        return None
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                return f"key {k!r} is {type(k).__name__}, not str"
            if (why := plain_value_problem(v, depth + 1)) is not None:
                return why
        return None
    return f"a value of type {t.__name__} (plain data only: nil, bool, numbers, str, lists, maps)"
