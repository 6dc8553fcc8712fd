"""The single ClickHouse client module.

Every statement the service runs goes through `ClickHouse`: it owns the
clickhouse-connect clients (embedded chDB or a server over HTTP), binds
parameters, applies timeouts, labels each call for metrics and maps driver
errors to domain errors. Calls are synchronous; async code uses the `a*`
methods, which run them on worker threads.
"""

from __future__ import annotations

import fcntl
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlparse

import anyio.to_thread
import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from service.errors import DataPathInUse, StorageUnavailable
from service.metrics import CLICKHOUSE_ERRORS, CLICKHOUSE_QUERY_SECONDS

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# chDB refuses a data path that another process holds with this message.
_LOCKED_PATH = re.compile(r"Cannot lock file|already running", re.IGNORECASE)


def as_utc(value: datetime) -> datetime:
    """A DateTime64(…, 'UTC') value as an aware UTC datetime (drivers may hand it back naive)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def is_embedded(url: str) -> bool:
    return url.startswith("chdb:")


def embedded_path(url: str) -> str:
    """The filesystem path of a `chdb:///abs/path` URL."""
    parsed = urlparse(url)
    return unquote(parsed.netloc + parsed.path) if parsed.netloc not in ("", "memory") else parsed.path


def path_is_locked(path: str) -> bool:
    """Whether another process holds the embedded engine's lock on `path/status`.

    chDB reports a held path only on stderr; its exception says BAD_ARGUMENTS.
    """
    status = os.path.join(path, "status")
    if not os.path.exists(status):
        return False
    with open(status, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _database_from_url(url: str) -> str | None:
    if is_embedded(url):
        return None
    path = urlparse(url).path.strip("/")
    return path.split("/")[0] or None


class ClickHouse:
    """A pool of clickhouse-connect clients on one database."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        pool_size: int = 4,
        max_overflow: int = 4,
        query_timeout_s: int = 30,
    ) -> None:
        self.url = url
        self.database = _database_from_url(url) or database
        if not IDENTIFIER.match(self.database):
            raise ValueError(f"invalid ClickHouse database name {self.database!r}")
        self.embedded = is_embedded(url)
        self._query_timeout_s = query_timeout_s
        self._pool: queue.LifoQueue[Client] = queue.LifoQueue()
        self._pool_size = pool_size
        self._capacity = threading.BoundedSemaphore(pool_size + max_overflow)
        self._lock = threading.Lock()
        self._open_clients: list[Client] = []
        self._insert_contexts: dict[tuple[Any, ...], Any] = {}
        self._closed = False

    # -- clients ---------------------------------------------------------

    def _new_client(self) -> Client:
        settings: dict[str, Any] = {}
        if not self.embedded:
            settings["max_execution_time"] = self._query_timeout_s
        try:
            client = clickhouse_connect.get_client(dsn=self.url, settings=settings)
            client.command("CREATE DATABASE IF NOT EXISTS {db:Identifier}", parameters={"db": self.database})
            client.database = self.database
        except ClickHouseError as exc:
            if self.embedded and (_LOCKED_PATH.search(str(exc)) or path_is_locked(embedded_path(self.url))):
                raise DataPathInUse(
                    f"the embedded ClickHouse data at {embedded_path(self.url)} is held by another "
                    "process (a running `finops serve`?). Use the running service's API, or stop it first."
                ) from exc
            raise StorageUnavailable(f"cannot connect to ClickHouse: {_short(exc)}") from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot connect to ClickHouse: {exc}") from exc
        with self._lock:
            self._open_clients.append(client)
        return client

    @contextmanager
    def client(self) -> Iterator[Client]:
        """Borrow a client for one or more calls; returned to the pool afterwards."""
        if self._closed:
            raise StorageUnavailable("the ClickHouse connection is closed")
        self._capacity.acquire()
        try:
            try:
                client = self._pool.get_nowait()
            except queue.Empty:
                client = self._new_client()
            try:
                yield client
            finally:
                if self._pool.qsize() < self._pool_size and not self._closed:
                    self._pool.put(client)
                else:
                    self._discard(client)
        finally:
            self._capacity.release()

    def _discard(self, client: Client) -> None:
        with self._lock:
            if client in self._open_clients:
                self._open_clients.remove(client)
            for key in [k for k in self._insert_contexts if k[0] == id(client)]:
                del self._insert_contexts[key]
        client.close()

    def open(self) -> None:
        """Open one client now, so a held data path or a dead server fails fast."""
        with self.client():
            pass

    def close(self) -> None:
        """Close every client; the embedded engine is released when the last one closes."""
        self._closed = True
        while True:
            try:
                self._pool.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            clients, self._open_clients = self._open_clients, []
        for client in clients:
            client.close()

    # -- calls -----------------------------------------------------------

    @contextmanager
    def _measured(self, label: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except ClickHouseError as exc:
            CLICKHOUSE_ERRORS.labels(label).inc()
            raise StorageUnavailable(f"ClickHouse {label} failed: {_short(exc)}") from exc
        except OSError as exc:
            CLICKHOUSE_ERRORS.labels(label).inc()
            raise StorageUnavailable(f"ClickHouse {label} failed: {exc}") from exc
        finally:
            CLICKHOUSE_QUERY_SECONDS.labels(label).observe(time.perf_counter() - started)

    def query(self, sql: str, parameters: dict[str, Any] | None = None, *, label: str) -> list[tuple[Any, ...]]:
        """Rows of a SELECT, parameters bound server-side (`{name:Type}` placeholders)."""
        with self._measured(label), self.client() as client:
            rows: list[tuple[Any, ...]] = [
                tuple(row) for row in client.query(sql, parameters=parameters or {}).result_rows
            ]
            return rows

    def query_dicts(self, sql: str, parameters: dict[str, Any] | None = None, *, label: str) -> list[dict[str, Any]]:
        with self._measured(label), self.client() as client:
            return list(client.query(sql, parameters=parameters or {}).named_results())

    @contextmanager
    def stream_rows(
        self, sql: str, parameters: dict[str, Any] | None = None, *, label: str
    ) -> Iterator[Iterator[Sequence[Sequence[Any]]]]:
        """Blocks of rows as the server sends them; consume them on the calling thread."""
        with (
            self._measured(label),
            self.client() as client,
            client.query_row_block_stream(sql, parameters=parameters or {}) as blocks,
        ):
            yield blocks

    def command(self, sql: str, parameters: dict[str, Any] | None = None, *, label: str) -> None:
        with self._measured(label), self.client() as client:
            client.command(sql, parameters=parameters or {})

    def insert(
        self,
        table: str,
        data: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        *,
        label: str,
        column_oriented: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """One INSERT of many rows (or columns, with `column_oriented`).

        The insert context (the table's column types) is prepared once per
        client, table and column list, and reused: describing the table again
        for every INSERT costs as much as a small write.
        """
        if not IDENTIFIER.match(table):
            raise ValueError(f"invalid table name {table!r}")
        names = tuple(column_names)
        with self._measured(label), self.client() as client:
            key = (id(client), table, names, column_oriented, tuple(sorted((settings or {}).items())))
            context = self._insert_contexts.get(key)
            if context is None:
                context = client.create_insert_context(
                    table,
                    column_names=list(names),
                    database=self.database,
                    column_oriented=column_oriented,
                    settings=settings,
                )
                self._insert_contexts[key] = context
            context.data = data
            try:
                client.insert(context=context)
            finally:
                context.data = None

    def ping(self) -> bool:
        try:
            self.query("SELECT 1", label="ping")
        except StorageUnavailable:
            return False
        return True

    # -- async -----------------------------------------------------------

    async def aquery(self, sql: str, parameters: dict[str, Any] | None = None, *, label: str) -> list[tuple[Any, ...]]:
        return await anyio.to_thread.run_sync(lambda: self.query(sql, parameters, label=label))

    async def aquery_dicts(
        self, sql: str, parameters: dict[str, Any] | None = None, *, label: str
    ) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(lambda: self.query_dicts(sql, parameters, label=label))


def _short(exc: BaseException) -> str:
    """First line of a driver error, without the server's stack and version trailer."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:500]
