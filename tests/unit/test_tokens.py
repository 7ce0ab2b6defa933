"""Request outcomes kept by token (``Store.remember``/``outcome``), on a real LMDB store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stepline.errors import RequestError
from stepline_daemon.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "db", map_size=16 * 1024 * 1024)
    yield s
    s.close()


def _init(store: Store, token: str | None) -> dict[str, object]:
    with store.env.begin(write=True) as txn:
        done = store.outcome(txn, token, "init") if token is not None else None
        if done is not None:
            return done
        result = store.init_run(txn, {"project": "p", "config": {"big": "x" * 1000}}, "c")
        if token is not None:
            store.remember(txn, token, "init", result)
        return result


def test_outcome_is_replayed_with_the_runs_config(store: Store) -> None:
    first = _init(store, "tok")
    assert _init(store, "tok") == first
    with store.env.begin() as txn:
        assert len(store.project_counts(txn)) == 1
        (_, raw), *_ = txn.cursor(db=store.tokens)
        assert b"xxxx" not in raw  # the config is not stored twice
    assert _init(store, None) != first  # no token: a second run


def test_expiry_forgets_only_old_outcomes(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import stepline_daemon.store as store_mod

    monkeypatch.setattr(store_mod.time, "time", lambda: 1000.0)
    old = _init(store, "old")
    monkeypatch.setattr(store_mod.time, "time", lambda: 2000.0)
    new = _init(store, "new")
    with store.env.begin(write=True) as txn:
        assert store.expire_tokens(txn, before=1500.0) == 1
    assert _init(store, "new") == new
    assert _init(store, "old") != old  # forgotten: decided afresh (a new run here)


@pytest.mark.parametrize("token", ["", "x" * 65, 5, b"bytes"])
def test_malformed_tokens_are_refused(store: Store, token: object) -> None:
    with store.env.begin() as txn, pytest.raises(RequestError, match="token"):
        store.outcome(txn, token, "init")
