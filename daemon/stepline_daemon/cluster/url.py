"""A ClickHouse server's address, as users write it:
``http://user:password@host:8123/database``."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

DEFAULT_PORT = 8123
# ClickHouse takes more, but a database name also goes into every query.
_DATABASE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class BadClusterUrl(ValueError):
    """The address cannot name a ClickHouse server and database; says why."""


@dataclass(frozen=True)
class ClusterUrl:
    scheme: str
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def parse(cls, text: str) -> ClusterUrl:
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("http", "https"):
            raise BadClusterUrl(
                f"{text!r}: the ClickHouse address must start with http:// or https:// "
                "(its HTTP interface, e.g. http://default@127.0.0.1:8123/stepline)"
            )
        if not parts.hostname:
            raise BadClusterUrl(f"{text!r} names no host")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise BadClusterUrl(f"{text!r}: the port is not a number in [0, 65535]") from None
        database = parts.path.strip("/") or "default"
        if not _DATABASE_RE.fullmatch(database):
            raise BadClusterUrl(
                f"{text!r}: database {database!r} must be letters, digits and '_', "
                "starting with a letter or '_'"
            )
        if parts.query or parts.fragment:
            raise BadClusterUrl(f"{text!r}: no query or fragment, only .../database")
        user = urllib.parse.unquote(parts.username or "default")
        password = urllib.parse.unquote(parts.password or "")
        return cls(parts.scheme, parts.hostname, port, user, password, database)

    @property
    def endpoint(self) -> str:
        """The HTTP interface's URL, without credentials (they go in headers)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/"

    def __str__(self) -> str:
        # Never the password: this ends up in logs and status output.
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{self.user}@{host}:{self.port}/{self.database}"
