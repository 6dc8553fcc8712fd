"""Fresh, migrated databases for tests without running every migration for every test.

Creating tables is the expensive part of a test's set-up on the embedded engine (each
table, part and metadata file is several file operations), so the session migrates a
database once, and each later test receives the tables of the previous test's database,
emptied, under a new database name:

1. the previous database's (materialized) views are dropped, so nothing reaches its
   tables any more;
2. its tables move to the new database (`RENAME TABLE`, a metadata operation on an
   Atomic database), and are emptied with `TRUNCATE` — all but `schema_migrations`;
3. the views are created again from the migrated definitions, naming the new database
   (a view's query names its database, so a view cannot move);
4. the schema is compared with the one the migrations produced: a test that changed
   the schema, or anything that fails along the way, costs the next test a database
   migrated from scratch instead.

Every test still gets a database of its own, with a name no earlier test used: an
earlier test's leftover client or thread cannot reach it, and nothing kept per database
name (a journal directory, a cache in the process) carries over.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from service.errors import StorageUnavailable
from service.storage.clickhouse import ClickHouse
from service.storage.migrations import migrate

_VIEWS = ("MaterializedView", "View")
_PLACEHOLDER = "{db}."


class DatabasePool:
    """Hands out migrated, empty databases on one engine, one test at a time."""

    def __init__(self, url: str, new_name: Any) -> None:
        self.url = url
        self._new_name = new_name
        self._admin: ClickHouse | None = None
        self._spare: str | None = None
        self._schema: list[tuple[Any, ...]] | None = None
        self.migrated = 0  # databases migrated from scratch this session
        self.reused = 0  # databases made from a previous test's tables

    def close(self) -> None:
        if self._spare is not None:
            self.drop(self._spare)
            self._spare = None

    @contextmanager
    def _connected(self) -> Iterator[None]:
        """A client for the pool's own statements, closed afterwards: between tests no client is
        open, so the embedded engine stops and starts with the tests' own clients, as it would
        without the pool (a test that restarts the app restarts the engine too)."""
        self._admin = ClickHouse(self.url, "default", pool_size=1, max_overflow=0)
        try:
            yield
        finally:
            self._admin.close()
            self._admin = None

    def take(self) -> str:
        """The name of a new database, migrated and empty."""
        with self._connected():
            return self._take()

    def _take(self) -> str:
        name: str = self._new_name()
        spare, self._spare = self._spare, None
        if spare is not None and self._schema is not None:
            try:
                self._move(spare, name)
                if self._schema_of(name) == self._schema:
                    self.reused += 1
                    return name
            except StorageUnavailable:
                pass
            self.drop(spare)
            self.drop(name)
        elif spare is not None:
            self.drop(spare)
        db = ClickHouse(self.url, name, pool_size=1, max_overflow=0)
        try:
            migrate(db)
        finally:
            db.close()
        self.migrated += 1
        schema = self._schema_of(name)
        if self._schema is None:
            self._schema = schema
        return name

    def give_back(self, name: str) -> None:
        """A test is done with `name`: its tables may serve the next test."""
        if self._spare is not None:
            self.drop(self._spare)
        self._spare = name

    def drop(self, name: str) -> None:
        if self._admin is not None:
            self._command("DROP DATABASE IF EXISTS {db:Identifier}", {"db": name})
            return
        with self._connected():
            self._command("DROP DATABASE IF EXISTS {db:Identifier}", {"db": name})

    # -- internals --------------------------------------------------------

    @property
    def _client(self) -> ClickHouse:
        assert self._admin is not None, "the pool's statements run inside _connected()"
        return self._admin

    def _command(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        self._client.command(sql, parameters, label="tests.databases")

    def _objects(self, name: str) -> list[tuple[str, str, str]]:
        rows = self._client.query(
            "SELECT name, engine, create_table_query FROM system.tables WHERE database = {db:String} ORDER BY name",
            {"db": name},
            label="tests.databases",
        )
        return [(str(n), str(engine), str(query)) for n, engine, query in rows]

    def _schema_of(self, name: str) -> list[tuple[Any, ...]]:
        """Every object's definition with the database name taken out, and the recorded migrations."""
        prefix = f"{name}."
        schema: list[tuple[Any, ...]] = [
            (n, engine, query.replace(prefix, _PLACEHOLDER)) for n, engine, query in self._objects(name)
        ]
        if any(n == "schema_migrations" for n, _, _ in schema):
            schema.extend(
                self._client.query(
                    "SELECT version, checksum FROM {db:Identifier}.schema_migrations FINAL ORDER BY version",
                    {"db": name},
                    label="tests.databases",
                )
            )
        return schema

    def _move(self, old: str, new: str) -> None:
        objects = self._objects(old)
        views = [(n, query) for n, engine, query in objects if engine in _VIEWS]
        tables = [n for n, engine, _ in objects if engine not in _VIEWS]
        for view, _ in views:
            self._command("DROP TABLE {db:Identifier}.{view:Identifier}", {"db": old, "view": view})
        self._command("CREATE DATABASE {db:Identifier}", {"db": new})
        if tables:
            self._command("RENAME TABLE " + ", ".join(f"{old}.`{table}` TO {new}.`{table}`" for table in tables))
        for table in tables:
            if table != "schema_migrations":
                self._command("TRUNCATE TABLE {db:Identifier}.{table:Identifier}", {"db": new, "table": table})
        prefix = f"{old}."
        for _, query in views:
            self._command(query.replace(prefix, f"{new}."))
        self.drop(old)
