"""Numbered, idempotent ClickHouse migrations.

Files `NNNN_name.sql` in `clickhouse/migrations/` are applied in order and
recorded in `schema_migrations`. Statements refer to the database as
`{db:Identifier}`, bound at run time, so each test can migrate a fresh one.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.storage.clickhouse import ClickHouse

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migrations_dir() -> Path:
    """`clickhouse/migrations` of the source tree (FINOPS_MIGRATIONS_DIR overrides)."""
    override = os.environ.get("FINOPS_MIGRATIONS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "clickhouse" / "migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def statements(self) -> list[str]:
        """The file's statements, split at `;` that ends a line, comments dropped."""
        lines = [line for line in self.sql.splitlines() if not line.lstrip().startswith("--")]
        parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
        return [part.strip() for part in parts if part.strip()]


def discover(directory: Path | None = None) -> list[Migration]:
    found = []
    for path in sorted((directory or migrations_dir()).glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name} does not match NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError("two migration files share a number")
    return found


_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS {db:Identifier}.schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


def applied_versions(db: ClickHouse) -> dict[int, str]:
    """Recorded migrations as version → checksum (empty if none ran yet)."""
    rows = db.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'schema_migrations'",
        {"db": db.database},
        label="migrations.exists",
    )
    if not rows[0][0]:
        return {}
    rows = db.query(
        "SELECT version, argMax(checksum, applied_at) FROM schema_migrations FINAL GROUP BY version",
        label="migrations.applied",
    )
    return {int(version): str(checksum) for version, checksum in rows}


def pending(db: ClickHouse, directory: Path | None = None) -> list[Migration]:
    done = applied_versions(db)
    return [m for m in discover(directory) if m.version not in done]


def migrate(
    db: ClickHouse, directory: Path | None = None, progress: Callable[[str], None] | None = None
) -> list[Migration]:
    """Apply every pending migration in order; returns those applied."""
    db.command(_SCHEMA_MIGRATIONS, {"db": db.database}, label="migrations.bootstrap")
    todo = pending(db, directory)
    for migration in todo:
        if progress:
            progress(f"applying {migration.path.name}")
        for statement in migration.statements():
            db.command(statement, {"db": db.database}, label="migrations.apply")
        db.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            ["version", "name", "checksum"],
            label="migrations.record",
        )
    return todo
