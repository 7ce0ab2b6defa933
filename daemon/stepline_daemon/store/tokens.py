"""Outcomes of requests that changed something, by their idempotency token.

Stored in the transaction that applied the request, so a resend after a lost
reply is answered with the first attempt's outcome, never applied twice.
"""

from __future__ import annotations

import time
from typing import Any, cast

import lmdb

from stepline.errors import RequestError
from stepline_daemon.messages import Token
from stepline_daemon.store import layout
from stepline_daemon.store.records import Store

# How long a request's outcome is kept for its resends. A client resends only
# within its call's timeout (seconds to minutes); a day covers any sane one.
TOKEN_TTL = 24 * 3600.0


def outcome(store: Store, txn: lmdb.Transaction, op: str, token: Token) -> dict[str, Any] | None:
    """The result of the request ``token`` names if an attempt of it was applied,
    else None: it is to be applied now."""
    raw = txn.get(token.key, db=store.tokens)
    if raw is None:
        return None
    done = layout.unpack(cast(bytes, raw))
    if done["req"] != token.fingerprint:
        shown = token.key.decode("utf-8", "surrogatepass")
        raise RequestError(f"token {shown!r} was already used for another request")
    result: dict[str, Any] = done["result"]
    if done["op"] == "init":
        if "run" in result:  # stored before the run number was named run_no
            result["run_no"] = result.pop("run")
            result["parent_run_no"] = result.pop("parent_run", None)
        raw_run = txn.get(layout.run_key(result["run_no"]), db=store.runs)
        run = None if raw_run is None else layout.unpack(cast(bytes, raw_run))
        if run is None or run.get("deleted") or run["archived_by"] is not None:
            # The run it made is gone or replaced since (a sync of an offline
            # file again, after a delete): decided afresh, as a new request.
            txn.delete(token.key, db=store.tokens)
            return None
        # Stored without the config (it can be large): the run's own, as the
        # first reply had it, since nothing else changes a new run meanwhile.
        result["config"] = run["config"]
    return result


def remember(
    store: Store,
    txn: lmdb.Transaction,
    op: str,
    token: Token,
    result: dict[str, Any],
    now: float | None = None,
) -> None:
    """Keep ``result`` as the outcome of the request ``token`` names; in the
    transaction that applied it, so the two are stored together or not at all."""
    if op == "init":
        result = {k: v for k, v in result.items() if k != "config"}
    done = {
        "op": op,
        "req": token.fingerprint,
        "t": time.time() if now is None else now,
        "result": result,
    }
    txn.put(token.key, layout.pack(done), db=store.tokens)


def expire(store: Store, txn: lmdb.Transaction, before: float) -> int:
    """Forget outcomes stored before ``before`` (a time.time() value)."""
    old = [
        bytes(key)
        for key, value in txn.cursor(db=store.tokens)
        if layout.unpack(cast(bytes, value))["t"] < before
    ]
    for key in old:
        txn.delete(key, db=store.tokens)
    return len(old)
