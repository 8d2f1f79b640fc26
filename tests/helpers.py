"""A small market for tests: parties with keys and clients over one ledger."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ledger import Client, InvalidEvent, KeyPair, Ledger
from ledger.schema import LOG_TABLES
from ledger.values import format_timestamp

PG_URL = os.environ.get("EDVEX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


def outcome(fn: Callable[[], Any]) -> Any:
    """What `fn` gives, or ("invalid", field) for the InvalidEvent it raises."""
    try:
        return fn()
    except InvalidEvent as e:
        return ("invalid", e.field)


def usage_dict(
    event_id: Any, actor: Any, occurred_at: Any, asset: Any, units: Any, revenue: Any, grant: Any
) -> dict[str, Any]:
    """A `usage.recorded` event as untrusted data, absent body fields left out."""
    body: dict[str, Any] = {"asset": asset, "units": units}
    if revenue is not None:
        body["revenue"] = revenue
    if grant is not None:
        body["grant"] = grant
    return {"id": event_id, "type": "usage.recorded", "actor": actor, "occurred_at": occurred_at,
            "body": body}  # fmt: skip


def ts(days: float = 0) -> str:
    return format_timestamp(datetime.now(UTC) + timedelta(days=days))


class Market:
    """Registers parties on demand and hands out unbuffered clients for them."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.keys: dict[str, KeyPair] = {}

    def party(self, name: str, kind: str = "creator") -> str:
        key = KeyPair.generate()
        self.keys[name] = key
        with self.client(name) as c:
            c.register_party(kind)
        return name

    def client(self, name: str, **options: Any) -> Client:
        options.setdefault("max_delay", 0)
        return Client(self.ledger, name, self.keys[name], **options)

    def do(self, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call one client method as `name` and flush at once."""
        with self.client(name) as c:
            return getattr(c, method)(*args, **kwargs)

    def size(self) -> int:
        return self.ledger.head().size


def worked_example(m: Market) -> dict[str, str]:
    """DESIGN.md's worked example: c1, c2 -> dataset D (agg) -> model M (dev)."""
    for name, kind in (
        ("c1", "creator"),
        ("c2", "creator"),
        ("agg", "aggregator"),
        ("dev", "developer"),
    ):
        m.party(name, kind)
    m.do("c1", "register_asset", "item-1", "data")
    m.do("c2", "register_asset", "item-2", "data")
    g1 = m.do("c1", "grant_consent", "item-1", "agg", ["derive"], share="0.5", grant="g1")
    g2 = m.do("c2", "grant_consent", "item-2", "agg", ["derive"], share="0.5", grant="g2")
    m.do("agg", "derive", "D", "dataset", "derive", [("item-1", 3, g1), ("item-2", 1, g2)])
    gd = m.do("agg", "grant_consent", "D", "dev", ["train"], share="0.1", grant="gD")
    m.do("dev", "derive", "M", "model", "train", [("D", 1, gd)])
    m.do("dev", "record_usage", "M", 1, "100.00")
    return {"g1": g1, "g2": g2, "gD": gd}


def drop_guards(conn: Connection) -> None:
    """What a compromised database does first: drop the append-only triggers (ledger/schema.py)."""
    for table in LOG_TABLES:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}"))
            conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}"))
        else:
            conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_update"))
            conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_delete"))
