"""W&B's step semantics and row validation, with a list as the sink: no daemon."""

from __future__ import annotations

import enum
import math
import struct
import time
import types
import warnings
from typing import Any

import numpy as np
import pytest

from stepline.rows import (
    MAX_KEY_LEN,
    MAX_KEYS_PER_ROW,
    RESERVED_KEYS,
    STEP_MAX,
    StepTracker,
    flatten,
)
from stepline_daemon.batches import check_row, check_step

RESERVED = {"_timestamp", "_runtime"}


class Harness:
    """A tracker whose committed rows land in ``rows`` as ``(step, row)``."""

    def __init__(self, start_step: int = 0, start_time: float | None = None) -> None:
        self.rows: list[tuple[int, dict[str, Any]]] = []
        self.start = time.time() - 10.0 if start_time is None else start_time
        self.t = StepTracker(start_step, self._sink, self.start, "test-run")

    def _sink(self, step: int, row: dict[str, Any]) -> None:
        self.rows.append((step, dict(row)))

    def user(self) -> list[tuple[int, dict[str, Any]]]:
        """Committed rows without the reserved keys the tracker adds."""
        return [(s, {k: v for k, v in r.items() if k not in RESERVED}) for s, r in self.rows]


# -------------------------------------------------------------- log(d), commit


def test_log_commits_at_current_step_and_advances() -> None:
    h = Harness()
    assert h.t.step == 0
    h.t.log({"a": 1})
    assert h.user() == [(0, {"a": 1})]
    assert h.t.step == 1
    h.t.log({"a": 2})
    h.t.log({"b": 3})
    assert h.user() == [(0, {"a": 1}), (1, {"a": 2}), (2, {"b": 3})]
    assert h.t.step == 3


def test_start_step_is_respected() -> None:
    h = Harness(start_step=11)
    h.t.log({"a": 1})
    assert h.user() == [(11, {"a": 1})]
    assert h.t.step == 12


def test_commit_true_is_the_default() -> None:
    h = Harness()
    h.t.log({"a": 1}, commit=True)
    assert h.user() == [(0, {"a": 1})]
    assert h.t.step == 1


def test_commit_false_accumulates_and_next_log_merges() -> None:
    h = Harness()
    h.t.log({"a": 1, "b": 1}, commit=False)
    h.t.log({"c": 2}, commit=False)
    assert h.rows == []
    assert h.t.step == 0
    h.t.log({"b": 5, "d": 3})  # later values for the same key win
    assert h.user() == [(0, {"a": 1, "b": 5, "c": 2, "d": 3})]
    assert h.t.step == 1
    h.t.log({"e": 4})
    assert h.user()[1] == (1, {"e": 4}), "the merged row must not leak into the next one"


def test_flush_pending_commits_and_is_idempotent() -> None:
    h = Harness()
    h.t.flush_pending()
    assert h.rows == [] and h.t.step == 0, "nothing pending: no empty row"
    h.t.log({"a": 1}, commit=False)
    h.t.flush_pending()
    assert h.user() == [(0, {"a": 1})]
    assert h.t.step == 1
    h.t.flush_pending()
    assert len(h.rows) == 1 and h.t.step == 1


# ---------------------------------------------------------------- log(d, step=)


def test_step_ahead_commits_pending_then_moves_and_defaults_to_no_commit() -> None:
    h = Harness()
    h.t.log({"a": 1}, commit=False)
    h.t.log({"b": 2}, step=5)
    assert h.user() == [(0, {"a": 1})], "the pending row is committed at the old step"
    assert h.t.step == 5
    h.t.log({"c": 3}, step=5)  # equal: merges
    assert len(h.rows) == 1, "step= implies commit=False: data stays pending"
    h.t.log({"d": 4}, step=9)
    assert h.user() == [(0, {"a": 1}), (5, {"b": 2, "c": 3})]
    assert h.t.step == 9
    h.t.flush_pending()
    assert h.user()[-1] == (9, {"d": 4})
    assert h.t.step == 10


def test_step_ahead_with_nothing_pending_commits_nothing() -> None:
    h = Harness()
    h.t.log({"a": 1}, step=3)
    assert h.rows == []
    assert h.t.step == 3
    h.t.log({"b": 2})  # a plain log() commits the pending row at step 3
    assert h.user() == [(3, {"a": 1, "b": 2})]
    assert h.t.step == 4


def test_step_equal_merges_into_pending_row() -> None:
    h = Harness()
    h.t.log({"a": 1}, step=0)
    h.t.log({"b": 2}, step=0)
    h.t.log({"a": 3}, step=0)
    assert h.rows == []
    assert h.t.step == 0
    h.t.log({"c": 4})
    assert h.user() == [(0, {"a": 3, "b": 2, "c": 4})]


def test_step_with_explicit_commit_true() -> None:
    h = Harness()
    h.t.log({"a": 1}, commit=False)
    h.t.log({"b": 2}, step=4, commit=True)
    assert h.user() == [(0, {"a": 1}), (4, {"b": 2})]
    assert h.t.step == 5


def test_step_equal_with_commit_true_commits_merged_row() -> None:
    h = Harness(start_step=2)
    h.t.log({"a": 1}, step=2)
    h.t.log({"b": 2}, step=2, commit=True)
    assert h.user() == [(2, {"a": 1, "b": 2})]
    assert h.t.step == 3


def test_step_with_explicit_commit_false() -> None:
    h = Harness()
    h.t.log({"a": 1}, step=2, commit=False)
    assert h.rows == [] and h.t.step == 2


def test_numpy_integer_step_is_accepted() -> None:
    h = Harness()
    h.t.log({"a": 1}, step=np.int64(7), commit=True)
    assert h.user() == [(7, {"a": 1})]
    assert type(h.rows[0][0]) is int
    assert h.t.step == 8


# -------------------------------------------------------------- steps behind


def test_step_behind_drops_warns_once_and_counts() -> None:
    h = Harness()
    h.t.log({"a": 1})
    h.t.log({"a": 2})
    h.t.log({"p": 9}, commit=False)  # pending at step 2
    assert h.t.dropped == 0
    with pytest.warns(RuntimeWarning, match="behind"):
        h.t.log({"x": 1}, step=1)
    assert h.t.dropped == 1
    assert h.t.step == 2
    assert len(h.rows) == 2

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h.t.log({"x": 2}, step=0)
        h.t.log({"x": 3}, step=1, commit=True)
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert h.t.dropped == 3
    assert h.t.step == 2
    assert len(h.rows) == 2

    # The dropped data never reaches a row; the pending one is intact.
    h.t.flush_pending()
    assert h.user() == [(0, {"a": 1}), (1, {"a": 2}), (2, {"p": 9})]
    assert all("x" not in r for _, r in h.rows)


def test_drop_warning_is_per_tracker() -> None:
    a, b = Harness(start_step=5), Harness(start_step=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            a.t.log({"x": 1}, step=1)
            b.t.log({"x": 1}, step=1)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 2
    assert a.t.dropped == 3 and b.t.dropped == 3
    assert a.rows == [] and b.rows == []


# ------------------------------------------------------------ row contents


def test_user_step_key_is_ignored() -> None:
    h = Harness()
    h.t.log({"_step": 100, "a": 1})
    assert h.rows[0][0] == 0
    assert "_step" not in h.rows[0][1]
    assert h.user() == [(0, {"a": 1})]
    assert h.t.step == 1
    assert flatten({"_step": 5}) == {}


def test_timestamp_and_runtime_on_every_committed_row() -> None:
    h = Harness(start_time=time.time() - 100.0)
    before = time.time()
    h.t.log({"a": 1})
    h.t.log({"b": 1}, commit=False)
    h.t.log({"c": 1}, step=5)
    h.t.log({"d": 1}, step=6)  # commits step 5
    h.t.flush_pending()  # commits step 6
    h.t.log({})  # an empty log still commits a row
    after = time.time()
    assert [s for s, _ in h.rows] == [0, 1, 5, 6, 7]
    for _, row in h.rows:
        assert row.keys() >= RESERVED
        ts, rt = row["_timestamp"], row["_runtime"]
        assert type(ts) is float and type(rt) is float
        assert before <= ts <= after
        assert rt == pytest.approx(ts - h.start, abs=1e-6)
        assert rt >= 100.0


def test_user_supplied_timestamp_is_overwritten() -> None:
    h = Harness()
    h.t.log({"_timestamp": 1.0, "_runtime": -5.0})
    row = h.rows[0][1]
    assert row["_timestamp"] > 1_000_000_000.0
    assert row["_runtime"] >= 0.0


def test_nested_dicts_flatten_to_dotted_names() -> None:
    h = Harness()
    h.t.log({"train": {"loss": 0.5, "opt": {"lr": 0.1}}, "epoch": 2, "empty": {}})
    assert h.user() == [(0, {"train.loss": 0.5, "train.opt.lr": 0.1, "epoch": 2})]
    assert flatten({"a": {"b": {"c": 1}}, "a.b.d": 2}) == {"a.b.c": 1, "a.b.d": 2}


def test_any_mapping_is_accepted() -> None:
    proxy = types.MappingProxyType({"a": types.MappingProxyType({"b": 1})})
    assert flatten(proxy) == {"a.b": 1}


def test_plain_scalars_keep_their_types() -> None:
    row = flatten({"i": 3, "f": 1.5, "b": False, "s": "x", "n": None, "big": 2**64 - 1})
    assert row == {"i": 3, "f": 1.5, "b": False, "s": "x", "n": None, "big": 2**64 - 1}
    assert [type(row[k]) for k in ("i", "f", "b", "s")] == [int, float, bool, str]
    assert flatten({"lo": -(2**63)}) == {"lo": -(2**63)}


def test_nan_and_infinities_are_kept() -> None:
    h = Harness()
    nan, inf = float("nan"), float("inf")
    h.t.log({"n": nan, "p": inf, "m": -inf, "z": -0.0})
    row = h.rows[0][1]
    assert math.isnan(row["n"])
    assert struct.pack(">d", row["n"]) == struct.pack(">d", nan)
    assert row["p"] == inf and row["m"] == -inf
    assert struct.pack(">d", row["z"]) == struct.pack(">d", -0.0)


def test_numpy_scalars_become_python_scalars() -> None:
    h = Harness()
    h.t.log(
        {
            "f32": np.float32(1.5),
            "f64": np.float64(0.25),
            "i64": np.int64(-(2**62)),
            "u64": np.uint64(2**64 - 1),
            "i8": np.int8(-3),
            "b": np.bool_(True),
            "nan32": np.float32("nan"),
            "zero_d": np.array(2.5),
        }
    )
    row = h.rows[0][1]
    expected: dict[str, tuple[type, Any]] = {
        "f32": (float, 1.5),
        "f64": (float, 0.25),
        "i64": (int, -(2**62)),
        "u64": (int, 2**64 - 1),
        "i8": (int, -3),
        "b": (bool, True),
        "zero_d": (float, 2.5),
    }
    for key, (typ, value) in expected.items():
        assert type(row[key]) is typ, key
        assert row[key] == value, key
    assert type(row["nan32"]) is float and math.isnan(row["nan32"])
    assert check_row(row) is None


def test_scalar_subclasses_are_reduced_to_base_types() -> None:
    class Color(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    row = flatten({"c": Color.RED, "n": Name("x")})
    assert row == {"c": 1, "n": "x"}
    assert type(row["c"]) is int and type(row["n"]) is str


# ----------------------------------------------------------------- errors


def _state(h: Harness) -> tuple[int, int, list[tuple[int, dict[str, Any]]]]:
    return h.t.step, h.t.dropped, list(h.rows)


def _primed() -> Harness:
    """A tracker with one committed row and a pending one at step 3."""
    h = Harness()
    h.t.log({"a": 1})
    h.t.log({"p": 1}, step=3)
    return h


def _assert_pending_untouched(h: Harness, before: tuple[Any, ...]) -> None:
    assert _state(h) == before
    h.t.flush_pending()
    assert h.user()[-1] == (3, {"p": 1}), "the failed call leaked into the pending row"


@pytest.mark.parametrize("data", [[("a", 1)], "abc", None, 5, {"a", "b"}, b"ab"])
def test_non_mapping_raises_type_error(data: Any) -> None:
    h = _primed()
    before = _state(h)
    with pytest.raises(TypeError):
        h.t.log(data)
    _assert_pending_untouched(h, before)
    with pytest.raises(TypeError):
        flatten(data)


@pytest.mark.parametrize("data", [{1: 2}, {b"a": 1}, {None: 1}, {"ok": {2: 3}}, {("a",): 1}])
def test_non_str_key_raises_type_error(data: Any) -> None:
    h = _primed()
    before = _state(h)
    with pytest.raises(TypeError):
        h.t.log(data)
    _assert_pending_untouched(h, before)


class _Obj:
    pass


BAD_VALUES = [
    [1, 2],
    (1,),
    {1, 2},
    _Obj(),
    object(),
    b"bytes",
    bytearray(b"x"),
    1j,
    np.array([1.0, 2.0]),
    np.datetime64("2020-01-01"),
]


@pytest.mark.parametrize("value", BAD_VALUES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize(
    "kwargs", [{}, {"commit": False}, {"step": 3}, {"step": 10}, {"step": 10, "commit": True}]
)
def test_unsupported_value_raises_and_leaves_state_unchanged(
    value: Any, kwargs: dict[str, Any]
) -> None:
    h = _primed()
    before = _state(h)
    with pytest.raises(TypeError):
        # A good key first: it must not be merged when a later one is bad.
        h.t.log({"good": 1.0, "nested": {"bad": value}}, **kwargs)
    _assert_pending_untouched(h, before)


def test_unsupported_value_behind_current_step_does_not_count_as_dropped() -> None:
    h = _primed()
    before = _state(h)
    with pytest.raises(TypeError):
        h.t.log({"bad": [1]}, step=0)
    _assert_pending_untouched(h, before)


def test_too_many_keys_raises_value_error() -> None:
    h = _primed()
    before = _state(h)
    too_many = {f"k{i}": i for i in range(MAX_KEYS_PER_ROW + 1)}
    with pytest.raises(ValueError):
        h.t.log(too_many)
    _assert_pending_untouched(h, before)
    nested = {"g": {f"k{i}": i for i in range(MAX_KEYS_PER_ROW + 1)}}
    with pytest.raises(ValueError):
        flatten(nested)
    assert len(flatten({f"k{i}": i for i in range(MAX_KEYS_PER_ROW)})) == MAX_KEYS_PER_ROW


def test_key_too_long_raises_value_error() -> None:
    assert flatten({"k" * MAX_KEY_LEN: 1}) == {"k" * MAX_KEY_LEN: 1}
    h = _primed()
    before = _state(h)
    with pytest.raises(ValueError):
        h.t.log({"k" * (MAX_KEY_LEN + 1): 1})
    with pytest.raises(ValueError):
        h.t.log({"a" * 200: {"b" * 60: 1}})  # too long only once joined
    _assert_pending_untouched(h, before)


@pytest.mark.parametrize("value", [2**64, 2**100, -(2**63) - 1])
def test_int_outside_64_bits_raises_value_error(value: int) -> None:
    h = _primed()
    before = _state(h)
    with pytest.raises(ValueError):
        h.t.log({"big": value})
    _assert_pending_untouched(h, before)


@pytest.mark.parametrize("step", ["1", 1.0, 2.5, True, False, [1], object(), np.float64(1.0)])
def test_bad_step_type_raises_type_error(step: Any) -> None:
    h = _primed()
    before = _state(h)
    with pytest.raises(TypeError):
        h.t.log({"a": 1}, step=step)
    _assert_pending_untouched(h, before)


@pytest.mark.parametrize("step", [-1, STEP_MAX + 1])
def test_step_out_of_range_raises_value_error(step: int) -> None:
    h = _primed()
    before = _state(h)
    with pytest.raises(ValueError):
        h.t.log({"a": 1}, step=step)
    _assert_pending_untouched(h, before)


def test_step_max_is_accepted() -> None:
    h = Harness()
    h.t.log({"a": 1}, step=STEP_MAX)
    assert h.t.step == STEP_MAX
    h.t.log({"b": 2})
    assert h.user() == [(STEP_MAX, {"a": 1, "b": 2})]


# --------------------------------------------- what the tracker commits is storable


def test_row_at_key_limit_is_refused_at_log_or_storable() -> None:
    h = Harness()
    try:
        h.t.log({f"k{i}": i for i in range(MAX_KEYS_PER_ROW)})
    except ValueError:
        return  # refusing at the log() call is fine
    assert check_row(h.rows[0][1]) is None


def test_accumulated_row_over_key_limit_is_refused_at_log_or_storable() -> None:
    h = Harness()
    half = MAX_KEYS_PER_ROW // 2 + 1
    try:
        h.t.log({f"a{i}": i for i in range(half)}, commit=False)
        h.t.log({f"b{i}": i for i in range(half)}, step=0)
        h.t.flush_pending()
    except ValueError:
        return
    assert check_row(h.rows[0][1]) is None


def test_empty_key_is_refused_at_log_or_storable() -> None:
    h = Harness()
    try:
        h.t.log({"": 1.0})
    except (TypeError, ValueError):
        return
    assert check_row(h.rows[0][1]) is None


def test_ordinary_committed_rows_pass_check_row() -> None:
    h = Harness()
    h.t.log({"a": {"b": 1, "c": float("nan")}, "s": "x", "n": None, "f": np.float32(2)})
    h.t.log({"x": True}, step=5)
    h.t.flush_pending()
    assert len(h.rows) == 2
    for step, row in h.rows:
        assert check_step(step) is None
        assert check_row(row) is None


# -------------------------------------------------------- check_row/check_step


@pytest.mark.parametrize(
    "row",
    [
        {},
        {"a": 1, "b": 1.5, "c": True, "d": "s", "e": None},
        {"nan": float("nan"), "inf": float("inf"), "big": 2**64 - 1, "neg": -(2**63)},
        {"k" * MAX_KEY_LEN: 0},
        {f"k{i}": i for i in range(MAX_KEYS_PER_ROW)},
    ],
    ids=["empty", "scalars", "specials", "long_key", "max_keys"],
)
def test_check_row_accepts_good_rows(row: dict[str, Any]) -> None:
    assert check_row(row) is None


BAD_ROWS: dict[str, Any] = {
    "list": [("a", 1)],
    "none": None,
    "str": "a",
    "mappingproxy": types.MappingProxyType({"a": 1}),
    "int_key": {1: 1},
    "bytes_key": {b"a": 1},
    "empty_key": {"": 1},
    "long_key": {"k" * (MAX_KEY_LEN + 1): 1},
    "list_value": {"a": [1]},
    "dict_value": {"a": {"b": 1}},
    "bytes_value": {"a": b"x"},
    "object_value": {"a": object()},
    "np_float32": {"a": np.float32(1.0)},
    "np_int64": {"a": np.int64(1)},
    "too_many_keys": {f"k{i}": i for i in range(MAX_KEYS_PER_ROW + len(RESERVED_KEYS) + 1)},
}


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_check_row_rejects_bad_rows(name: str) -> None:
    why = check_row(BAD_ROWS[name])
    assert isinstance(why, str) and why


@pytest.mark.parametrize("step", [0, 1, 2**32, STEP_MAX])
def test_check_step_accepts_good_steps(step: int) -> None:
    assert check_step(step) is None


@pytest.mark.parametrize(
    "step", [-1, STEP_MAX + 1, 2**64, True, False, 1.0, "1", None, [1], np.int64(1)]
)
def test_check_step_rejects_bad_steps(step: Any) -> None:
    why = check_step(step)
    assert isinstance(why, str) and why


class _Tensor:
    """Stands in for a torch tensor: torch is not installed here, and must never be imported."""

    __module__ = "torch"

    def __init__(self, value: float, ndim: int) -> None:
        self.value, self.ndim = value, ndim

    def item(self) -> float:
        return self.value


def test_torch_zero_d_tensors_convert_without_importing_torch() -> None:
    import sys

    assert flatten({"loss": _Tensor(0.25, 0)}) == {"loss": 0.25}
    with pytest.raises(TypeError, match="_Tensor"):
        flatten({"batch": _Tensor(0.25, 1)})
    assert "torch" not in sys.modules
