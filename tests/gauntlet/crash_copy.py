"""Copy a live store's ``data.mdb`` while holding an LMDB read transaction.

``python crash_copy.py DATA_DIR DEST_DIR``

A reader in another process than the daemon (LMDB forbids opening one
environment twice in a process). While its transaction is open, the daemon's
writer reuses no page that the reader's snapshot, or any later commit, can
reach, so the copy holds a consistent store: the newest commit whose meta page
was copied. Prints the reader's transaction id.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import lmdb


def main() -> int:
    src, dest = Path(sys.argv[1]), Path(sys.argv[2])
    dest.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(src), readonly=True, lock=True, max_dbs=8, create=False)
    try:
        try:
            txn = env.begin()
        except lmdb.MapResizedError:  # the daemon grew the map since we opened it
            env.set_mapsize(0)
            txn = env.begin()
        with txn:
            shutil.copyfile(src / "data.mdb", dest / "data.mdb")
            print(txn.id(), flush=True)
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
