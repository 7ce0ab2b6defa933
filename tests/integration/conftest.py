"""Fixtures the cluster tests share: a clickhouse-server per module, and chDB."""

from tests.clickhouse import chdb_engine, clickhouse

__all__ = ["chdb_engine", "clickhouse"]
