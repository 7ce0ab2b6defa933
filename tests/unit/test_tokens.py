"""Request outcomes kept by token (``Store.remember``/``outcome``), on a real LMDB store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stepline.errors import RequestError
from stepline_daemon.store import Store
from tests import storeops


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "db", map_size=16 * 1024 * 1024)
    yield s
    s.close()


def _init(store: Store, msg: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """What the writer does with an init: replay its outcome, or apply and keep it."""
    msg = {"op": "init", "project": "p", **msg}
    with store.env.begin(write=True) as txn:
        if "token" in msg and (done := storeops.outcome(store, txn, msg)) is not None:
            return done
        result = storeops.init_run(store, txn, msg, "c")
        if "token" in msg:
            storeops.remember(store, txn, msg, result, now)
        return result


BIG = {"big": "x" * 1000}


def test_outcome_is_replayed_with_the_runs_config(store: Store) -> None:
    first = _init(store, {"token": "tok", "config": BIG})
    assert _init(store, {"token": "tok", "config": BIG, "rid": 9}) == first  # a resend
    with store.env.begin() as txn:
        assert storeops.project_counts(store, txn) == [("p", 1)]
        (_, raw), *_ = txn.cursor(db=store.tokens)
        assert b"xxxx" not in raw  # the config is not stored twice
    assert _init(store, {"config": BIG}) != first  # no token: a second run


def test_a_token_names_one_request(store: Store) -> None:
    _init(store, {"token": "tok", "id": "a"})
    with pytest.raises(RequestError, match="already used for another request"):
        _init(store, {"token": "tok", "id": "b"})
    with store.env.begin() as txn:
        assert storeops.project_counts(store, txn) == [("p", 1)]


def test_a_run_deleted_since_is_made_again(store: Store) -> None:
    # An offline file synced, its run deleted, the file synced again: a new run.
    first = _init(store, {"token": "tok", "id": "a"})
    with store.env.begin(write=True) as txn:
        storeops.update_run(
            store, txn, "finish", {"run_no": first["run_no"], "exit_code": 0}, "c", 1
        )
        storeops.delete_run(store, txn, {"project": "p", "id": "a"})
    again = _init(store, {"token": "tok", "id": "a"})
    assert again["id"] == "a" and again["run_no"] != first["run_no"]
    assert _init(store, {"token": "tok", "id": "a"}) == again  # and kept, from now


def test_expiry_forgets_only_old_outcomes(store: Store) -> None:
    old = _init(store, {"token": "old"}, now=1000.0)
    new = _init(store, {"token": "new"}, now=2000.0)
    with store.env.begin(write=True) as txn:
        assert storeops.expire_tokens(store, txn, 1500.0) == 1
    assert _init(store, {"token": "new"}) == new
    assert _init(store, {"token": "old"}) != old  # forgotten: decided afresh (a new run)


@pytest.mark.parametrize("token", ["", "x" * 65, 5, b"bytes"])
def test_malformed_tokens_are_refused(store: Store, token: object) -> None:
    with store.env.begin() as txn, pytest.raises(RequestError, match="token"):
        storeops.outcome(store, txn, {"op": "init", "token": token})
