"""The database tables of the ledger, and the triggers that make the log tables append-only.

Log tables (events, batches, tree_nodes, checkpoints) are written once and guarded by triggers
that refuse every UPDATE and DELETE (and TRUNCATE on PostgreSQL). Projection tables are read
models rebuilt from the log by `edvex log rebuild`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Connection

metadata = MetaData()
# A BIGINT key that is SQLite's rowid (INTEGER PRIMARY KEY), so appends stay sequential there.
SeqType = BigInteger().with_variant(Integer(), "sqlite")

ID = 128
TS = 27  # 2026-11-28T17:23:05.123456Z

log_head = Table(
    "log_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("batches", BigInteger, nullable=False),
    Column("recorded_at", String(TS), nullable=False),
    Column("frontier", LargeBinary, nullable=False),
    Column("currency", String(8), nullable=False),
    Column("origin", String(256), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=False),
    Column("id", String(ID), nullable=False, unique=True),
    Column("type", String(32), nullable=False),
    Column("actor", String(ID), nullable=False),
    Column("occurred_at", String(TS), nullable=False),
    Column("recorded_at", String(TS), nullable=False),
    Column("body", Text, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("leaf", LargeBinary, nullable=False),
    Column("batch", BigInteger, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("batch", SeqType, primary_key=True, autoincrement=False),
    Column("actor", String(ID), nullable=False),
    Column("key", String(64), nullable=False),
    Column("digest", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
)

tree_nodes = Table(
    "tree_nodes",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary, nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("size", SeqType, primary_key=True, autoincrement=False),
    Column("root", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
)

LOG_TABLES = ("events", "batches", "tree_nodes", "checkpoints")

# --- projections -------------------------------------------------------------------------------

parties = Table(
    "parties",
    metadata,
    Column("party", String(ID), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("name", Text, nullable=False),
    Column("public_key", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
)

assets = Table(
    "assets",
    metadata,
    Column("asset", String(ID), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("owner", String(ID), nullable=False),
    Column("content_hash", String(64)),
    Column("uri", Text),
    Column("metadata", Text),
    Column("parents", Integer, nullable=False),
    Column("seq", BigInteger, nullable=False),
)

grants = Table(
    "grants",
    metadata,
    Column("grant", String(ID), primary_key=True),
    Column("asset", String(ID), nullable=False),
    Column("grantor", String(ID), nullable=False),
    Column("grantee", String(ID), nullable=False),
    Column("purposes", String(64), nullable=False),
    Column("terms", Text, nullable=False),
    Column("valid_from", String(TS), nullable=False),
    Column("valid_until", String(TS)),
    Column("seq", BigInteger, nullable=False),
    Column("revoked_seq", BigInteger),
    Index("grants_by_asset", "asset", "grantee"),
)

edges = Table(
    "edges",
    metadata,
    Column("child", String(ID), primary_key=True),
    Column("parent", String(ID), primary_key=True),
    Column("weight", String(64), nullable=False),
    Column("norm_num", Text, nullable=False),
    Column("norm_den", Text, nullable=False),
    Column("grant", String(ID), nullable=False),
    Column("share", String(64), nullable=False),
    Column("terms", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Index("edges_by_parent", "parent"),
)

# Each distinct (asset, actor, grant) of the usage, numbered from 1 in the order the log first
# shows it: settlement sums usage by this one integer, as fast as the database sums anything.
usage_groups = Table(
    "usage_groups",
    metadata,
    Column("group_id", Integer, primary_key=True, autoincrement=False),
    Column("asset", String(ID), nullable=False),
    Column("actor", String(ID), nullable=False),
    Column("grant", String(ID)),
    Index("usage_groups_by_asset", "asset"),
)

usage = Table(
    "usage",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=False),
    Column("asset", String(ID), nullable=False),
    Column("actor", String(ID), nullable=False),
    Column("grant", String(ID)),
    Column("units", BigInteger, nullable=False),
    Column("revenue", BigInteger, nullable=False),
    Column("group_id", Integer, nullable=False),
)

PROJECTIONS = (parties, assets, grants, edges, usage_groups, usage)


def missing_guards(conn: Connection, tables: Sequence[str] = LOG_TABLES) -> list[str]:
    """The append-only triggers that should exist on `tables` and do not."""
    if conn.dialect.name == "postgresql":
        wanted = [f"{t}_append_only" for t in tables] + [f"{t}_no_truncate" for t in tables]
        rows = conn.exec_driver_sql(
            "SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal"
        )
    else:
        wanted = [f"{t}_no_{op}" for t in tables for op in ("update", "delete", "replace")]
        rows = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    present = {r[0] for r in rows}
    return [name for name in wanted if name not in present]


def install_guards(conn: Connection, tables: Sequence[str] = LOG_TABLES) -> None:
    """Create the append-only triggers on `tables` (idempotent)."""
    if conn.dialect.name == "postgresql":
        _install_pg_guards(conn, tables)
    else:
        _install_sqlite_guards(conn, tables)


# The keys an INSERT OR REPLACE could collide on: SQLite deletes the old row for a REPLACE without
# firing DELETE triggers, so an INSERT that would collide is refused before it happens.
UNIQUE_KEYS: dict[str, list[list[str]]] = {
    "events": [["seq"], ["id"]],
    "batches": [["batch"]],
    "tree_nodes": [["level", "idx"]],
    "checkpoints": [["size"]],
    "runs": [["run"]],
    "statements": [["run", "party"]],
    "postings": [["run", "n"]],
}


def _install_sqlite_guards(conn: Connection, tables: Sequence[str]) -> None:
    for table in tables:
        for op in ("UPDATE", "DELETE"):
            conn.exec_driver_sql(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'edvex: {table} is append-only ({op} refused)'); END"
            )
        collides = " OR ".join(
            f"EXISTS (SELECT 1 FROM {table} WHERE "
            + " AND ".join(f'"{c}" = NEW."{c}"' for c in key)
            + ")"
            for key in UNIQUE_KEYS[table]
        )
        conn.exec_driver_sql(
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table} "
            f"WHEN {collides} "
            f"BEGIN SELECT RAISE(ABORT, 'edvex: {table} is append-only (REPLACE refused)'); END"
        )


def _install_pg_guards(conn: Connection, tables: Sequence[str]) -> None:
    conn.exec_driver_sql(
        "CREATE OR REPLACE FUNCTION edvex_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'edvex: %% is append-only (%% refused)', TG_TABLE_NAME, TG_OP; "
        "END $$"
    )
    for table in tables:
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        conn.exec_driver_sql(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION edvex_append_only()"
        )
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        conn.exec_driver_sql(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION edvex_append_only()"
        )
