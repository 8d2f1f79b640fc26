"""Settlement's tables: closed runs, signed statements and their postings (append-only)."""

from __future__ import annotations

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

from ledger.schema import ID, install_guards

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("run", Integer, primary_key=True, autoincrement=False),
    Column("cut_prev", BigInteger, nullable=False),
    Column("cut", BigInteger, nullable=False),
    Column("statements_root", LargeBinary, nullable=False),
    Column("statements", Integer, nullable=False),
    Column("arrived", BigInteger, nullable=False),
    Column("closed_seq", BigInteger, nullable=False),
)

statements = Table(
    "statements",
    metadata,
    Column("run", Integer, primary_key=True, autoincrement=False),
    Column("party", String(ID), primary_key=True),
    Column("body", Text, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("total_in", BigInteger, nullable=False),
    Column("total_out", BigInteger, nullable=False),
    Column("total_retained", BigInteger, nullable=False),
    Index("statements_by_party", "party"),
)

postings = Table(
    "postings",
    metadata,
    Column("run", Integer, primary_key=True, autoincrement=False),
    Column("n", Integer, primary_key=True, autoincrement=False),
    Column("payer", String(ID), nullable=False),
    Column("payee", String(ID), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("asset", String(ID), nullable=False),
    Column("via", String(ID), nullable=False),
    Column("grant", String(ID)),
    Column("units", BigInteger),
    Column("amount", BigInteger, nullable=False),
)

TABLES = ("runs", "statements", "postings")


def create(conn: Connection) -> None:
    """Create settlement's tables and guard them like the log (idempotent)."""
    metadata.create_all(conn)
    install_guards(conn, TABLES)
