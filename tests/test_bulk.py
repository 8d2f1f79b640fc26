"""`bulk.insert_rows`, the driver-speed insert of the hot tables, on both backends: every value
comes back as it went in, whatever the number of rows (full statements, a remainder, both), and
blobs given as bytes, as bytearrays or as NULL."""

from __future__ import annotations

import pytest
from sqlalchemy import BigInteger, Column, LargeBinary, MetaData, String, Table, select

from ledger import Ledger
from ledger.bulk import ConstraintRefused, insert_rows

metadata = MetaData()
table = Table(
    "bulk_rows",
    metadata,
    Column("n", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(64), nullable=False),
    Column("digest", LargeBinary, nullable=False),
    Column("extra", LargeBinary),
)


def _rows(count: int) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for n in range(count):
        digest = n.to_bytes(32, "big")
        extra = [None, digest[::-1], bytearray(b"\x00" + digest)][n % 3]
        out.append((n, f"row-{n}", digest if n % 2 else bytearray(digest), extra))
    return out


def _as_stored(row: tuple[object, ...]) -> tuple[object, ...]:
    n, name, digest, extra = row
    return n, name, bytes(digest), None if extra is None else bytes(extra)  # type: ignore[call-overload]


@pytest.mark.parametrize("count", [1, 499, 500, 1000, 1234], ids=lambda c: f"{c}-rows")
def test_rows_come_back_as_given(db_url: str, count: int) -> None:
    led = Ledger.open(db_url)
    rows = _rows(count)
    with led.engine.begin() as conn:
        metadata.create_all(conn)
        insert_rows(conn, table, rows)
    with led.engine.connect() as conn:
        stored = conn.execute(select(table).order_by(table.c.n)).all()
    led.close()
    assert [_as_stored(tuple(r)) for r in stored] == [_as_stored(r) for r in rows]


def test_a_taken_key_is_refused_and_nothing_is_written(db_url: str) -> None:
    led = Ledger.open(db_url)
    with led.engine.begin() as conn:
        metadata.create_all(conn)
        insert_rows(conn, table, _rows(3))
    with pytest.raises(ConstraintRefused), led.engine.begin() as conn:
        insert_rows(conn, table, _rows(600)[2:])  # row 2 is taken; rows 3.. are new
    with led.engine.connect() as conn:
        assert conn.execute(select(table.c.n).order_by(table.c.n)).scalars().all() == [0, 1, 2]
    led.close()
