"""The stepline daemon: one per node, owns the LMDB store, serves a Unix socket."""
