"""Bulk inserts at the driver's speed for the hot tables (events, usage).

SQLite gets one `executemany` of a prepared INSERT; PostgreSQL gets `COPY ... FROM STDIN` through
psycopg 3. Both run inside the caller's SQLAlchemy transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import Table
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError


class ConstraintRefused(Exception):
    """The database refused a row: a unique key already taken, or a guard (the driver's words)."""


def _quoted(table: Table) -> tuple[str, str]:
    names = ", ".join(f'"{c.name}"' for c in table.columns)
    return f'"{table.name}"', names


def insert_rows(conn: Connection, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert tuples whose fields follow `table.columns` in order."""
    if not rows:
        return
    name, columns = _quoted(table)
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        try:
            with raw.cursor() as cur, cur.copy(f"COPY {name} ({columns}) FROM STDIN") as copy:  # type: ignore[union-attr]
                for row in rows:
                    copy.write_row(row)
        except psycopg.IntegrityError as e:
            raise ConstraintRefused(_first_line(e)) from e
        return
    marks = ", ".join("?" for _ in table.columns)
    try:
        conn.exec_driver_sql(f"INSERT INTO {name} ({columns}) VALUES ({marks})", list(rows))
    except IntegrityError as e:
        raise ConstraintRefused(_first_line(e.orig if e.orig is not None else e)) from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
