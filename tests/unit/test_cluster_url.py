"""The cluster's address and SQL literals: pure."""

from __future__ import annotations

import pytest

from stepline_daemon.cluster import sql
from stepline_daemon.cluster.url import BadClusterUrl, ClusterUrl


def test_a_full_address_parses() -> None:
    u = ClusterUrl.parse("http://ml:p%40ss@ch.example:9123/metrics")
    assert (u.scheme, u.host, u.port, u.user, u.password, u.database) == (
        "http",
        "ch.example",
        9123,
        "ml",
        "p@ss",
        "metrics",
    )
    assert u.endpoint == "http://ch.example:9123/"
    assert "p@ss" not in str(u) and str(u) == "http://ml@ch.example:9123/metrics"


def test_defaults_are_clickhouses() -> None:
    u = ClusterUrl.parse("https://[::1]")
    assert (u.port, u.user, u.password, u.database) == (8123, "default", "", "default")
    assert u.endpoint == "https://[::1]:8123/"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("tcp://h:9000/db", "http:// or https://"),
        ("h:8123", "http:// or https://"),
        ("http:///db", "no host"),
        ("http://h:99999/db", "port"),
        ("http://h/my-db", "database 'my-db'"),
        ("http://h/db;drop", "database"),
        ("http://h/db?x=1", "no query"),
    ],
)
def test_bad_addresses_say_why(text: str, why: str) -> None:
    with pytest.raises(BadClusterUrl, match=why.replace("?", r"\?")):
        ClusterUrl.parse(text)


def test_literals() -> None:
    assert sql.string("it's a \\ \n\t") == "'it\\'s a \\\\ \\n\\t'"
    assert [sql.number(x) for x in (1, -2, 0.5, float("nan"), float("inf"), -float("inf"))] == [
        "1",
        "-2",
        "0.5",
        "nan",
        "inf",
        "-inf",
    ]
    assert sql.literal(["a", 1, None, True]) == "['a', 1, NULL, 1]"
    with pytest.raises(TypeError):
        sql.literal(b"bytes")
