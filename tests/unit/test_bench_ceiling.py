"""The ceiling pipe of bench/ceiling.py: every row lands, and a missing one is caught."""

from __future__ import annotations

from pathlib import Path

import lmdb
import msgpack
import pytest

from bench.ceiling import frame_batches, pack_rows, run_ceiling, verify


def test_frames_carry_every_pair_in_order() -> None:
    pairs = pack_rows(3, 25)
    frames = frame_batches(pairs, 10)
    assert len(frames) == 3
    out = []
    for f in frames:
        assert int.from_bytes(f[:4], "big") == len(f) - 4
        out += [tuple(p) for p in msgpack.unpackb(f[4:])]
    assert out == pairs
    assert msgpack.unpackb(pairs[24][1])["m9"] == 24.0 + 9


@pytest.mark.timeout(30)
def test_run_stores_every_row_and_cleans_up(tmp_path: Path) -> None:
    result = run_ceiling(2, 2000, tmp_path, batch_rows=250)
    assert result["writers"] == 2
    assert result["rows"] == 4000
    assert 1 <= result["commits"] <= 16
    assert result["elapsed_s"] > 0
    assert result["rows_per_s"] == pytest.approx(4000 / result["elapsed_s"])
    assert list(tmp_path.iterdir()) == []


def test_verify_catches_a_missing_row(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, (key, value) in enumerate(pack_rows(0, 10)):
            if i != 4:
                txn.put(key, value)
    env.close()
    with pytest.raises(RuntimeError, match="9 rows, expected 10"):
        verify(tmp_path, 1, 10)


def test_verify_catches_a_changed_row(tmp_path: Path) -> None:
    rows = pack_rows(0, 100)
    key, value = rows[64]
    rows[64] = (key, value.replace(msgpack.packb(64.0), msgpack.packb(-64.0), 1))
    env = lmdb.open(str(tmp_path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in rows:
            txn.put(key, value)
    env.close()
    with pytest.raises(RuntimeError, match="step 64 reads back"):
        verify(tmp_path, 1, 100)
