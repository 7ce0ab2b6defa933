"""The cluster store: ClickHouse, fed by every node's daemon, read by one API.

Here so far: the server's address (``url``), SQL literals (``sql``), the
schema (``schema``) and a small HTTP client (``client``), each checked against
Debian's ClickHouse 18.16 and a current one (chDB) by the tests. The shipper
and the cluster read model build on them.
"""
