"""The node's store: runs and their history in LMDB (see ``layout``)."""

from stepline_daemon.store.layout import TruncatedStore
from stepline_daemon.store.records import Store

__all__ = ["Store", "TruncatedStore"]
