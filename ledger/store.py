"""The log store on SQLAlchemy 2: append, read, prove, checkpoint, verify and rebuild.

This is the only module of the ledger that touches the database. Driver errors are translated into
`StoreError` here, so callers never import a driver.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, partial
from typing import Any, cast

import psycopg
from sqlalchemy import (
    Engine,
    String,
    any_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from . import merkle
from . import schema as s
from .audit import Auditor, AuditReport, BatchRecord, EventRecord, StoredRow
from .bulk import ConstraintRefused, insert_rows
from .canonical import canonical_bytes, recorded_at_member
from .checkpoint import Checkpoint, sign_checkpoint
from .errors import (
    ConflictError,
    IntegrityError,
    InvalidEvent,
    LedgerError,
    PartialDuplicate,
    RuleViolation,
    StoreError,
)
from .events import OPERATOR as OPERATOR
from .events import (
    Encoded,
    Entry,
    Event,
    UsageEntry,
    UsageRecorded,
    UsageRecordedBody,
    batch_digest,
    check_entries,
    encode_all,
    encode_entries,
    entry_event,
    parse_event,
)
from .keys import KeyPair, verify_signature
from .projections import DbSource, edge_from_row, grant_from_row, write_effects
from .rules import (
    Effect,
    EmptySource,
    Grant,
    State,
    UsageRow,
    check,
    check_signer,
    check_uses,
)
from .values import format_timestamp, uuid7

DEFAULT_URL = "sqlite:///edvex.db"
MAX_BATCH = 100_000
# Perfect subtrees of at least 2**NODE_LEVEL leaves are stored; smaller ones are recomputed from
# the leaf hashes kept on each event row when a proof needs them.
NODE_LEVEL = 4
_READ_CHUNK = 10_000
_ID_CHUNK = 500

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SignedBatch:
    """Events of one actor with the actor's Ed25519 signature over the batch digest. Immutable.

    The SDK's own uses travel as `UsageEntry` tuples in `entries`, not as models, from its
    buffer to the log's rows; `events` gives every event as a model, made when first asked for.
    """

    actor: str
    key: str
    entries: tuple[Entry, ...]
    signature: bytes

    def __init__(self, actor: str, key: str, events: Sequence[Entry], signature: bytes) -> None:
        self._set(actor, key, tuple(events), signature)

    def _set(self, actor: str, key: str, entries: tuple[Entry, ...], signature: bytes) -> None:
        fields = self.__dict__
        fields["actor"], fields["key"], fields["entries"] = actor, key, entries
        fields["signature"] = signature

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a SignedBatch is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a SignedBatch is immutable (cannot delete {name!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SignedBatch):
            return NotImplemented
        return (self.actor, self.key, self.signature, self.events) == (
            other.actor, other.key, other.signature, other.events)  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.actor, self.key, self.signature))

    def __repr__(self) -> str:
        shown = f"actor={self.actor!r}, key={self.key!r}, events=<{len(self.entries)}>"
        return f"SignedBatch({shown}, signature={self.signature.hex()[:16]}...)"

    @classmethod
    def sign(cls, actor: str, key: KeyPair, events: Sequence[Entry]) -> SignedBatch:
        batch = cls(actor, key.public_hex, events, b"")
        signed = cls(actor, key.public_hex, batch.entries, key.sign(batch.digest))
        # computed once: the events are immutable
        signed.__dict__["encoded"], signed.__dict__["hashes"] = batch.encoded, batch.hashes
        for known in ("models", "usage_bodies"):
            if known in batch.__dict__:
                signed.__dict__[known] = batch.__dict__[known]
        return signed

    @cached_property
    def models(self) -> dict[int, Event]:
        """The entries that are models, by their place in the batch, in order (the others are
        the SDK's `UsageEntry` tuples): found in one pass, so that the checks of a batch of the
        SDK's uses pass over only the few models, if any."""
        return {i: e for i, e in enumerate(self.entries) if not isinstance(e, tuple)}

    @cached_property
    def events(self) -> tuple[Event, ...]:
        """Every event as a model (`UsageEntry` tuples made into `UsageRecorded`)."""
        if len(self.models) == len(self.entries):
            return cast("tuple[Event, ...]", self.entries)
        bodies = self.usage_bodies
        return tuple(
            entry_event(self.actor, e, bodies[e[2]]) if isinstance(e, tuple) else e
            for e in self.entries
        )

    @cached_property
    def usage_bodies(self) -> dict[str, UsageRecordedBody]:
        """The body of each distinct `UsageEntry` text, every entry checked first
        (`events.check_entries`: an InvalidEvent names the first that fails)."""
        if not self.models:
            return check_entries(cast("tuple[UsageEntry, ...]", self.entries))
        uses = [e for e in self.entries if isinstance(e, tuple)]
        return check_entries(uses) if uses else {}

    @cached_property
    def ids(self) -> list[str]:
        if not self.models:
            return [e[0] for e in cast("tuple[UsageEntry, ...]", self.entries)]
        return [e[0] if isinstance(e, tuple) else e.id for e in self.entries]

    @cached_property
    def encoded(self) -> list[Encoded]:
        """Each event's canonical body and the parts of its signed bytes (`events.encode`)."""
        entries = self.entries
        if entries and not self.models:
            self.usage_bodies  # noqa: B018 -- every body is checked before its bytes are signed
            done = encode_entries(self.actor, cast("list[UsageEntry]", entries))
            if done is not None:
                return done
        return encode_all(self.events)

    @cached_property
    def hashes(self) -> list[bytes]:
        sha = hashlib.sha256
        return [sha(head + tail).digest() for _body, head, tail in self.encoded]

    @cached_property
    def digest(self) -> bytes:
        return batch_digest(self.hashes)


@dataclass(frozen=True)
class AppendResult:
    batch: int | None  # None when the whole batch was already in the log
    seqs: tuple[int, ...]
    recorded_at: str

    @property
    def duplicate(self) -> bool:
        return self.batch is None


@dataclass(frozen=True)
class Head:
    size: int
    batches: int
    recorded_at: str
    frontier: merkle.Frontier
    currency: str
    origin: str

    @property
    def root(self) -> bytes:
        return self.frontier.root()


def normalise_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use psycopg 3 for them."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _engine(url: str) -> Engine:
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        # Connections are pooled (a new one reads the whole schema before its first statement,
        # and the last one to close checkpoints the WAL into the database file): measured on
        # 200,000 uses in batches of 5,000, pooling made ingest about 8% faster.
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = create_engine(url, pool_pre_ping=True)
    event.listen(engine, "connect", _postgresql_connect)
    return engine


# Ledgers opened by URL, and the engines their forked children left to their parents. A database
# connection must not be used, nor closed, on both sides of a fork (SQLite's and PostgreSQL's
# documentation both say so), and a pooled one outlives the transaction that made it.
_OPENED: weakref.WeakSet[Ledger] = weakref.WeakSet()
_INHERITED: list[Engine] = []


def _reopen_after_fork() -> None:
    for ledger in list(_OPENED):
        ledger._after_fork_in_child()


os.register_at_fork(after_in_child=_reopen_after_fork)


def _postgresql_connect(dbapi_conn: Any, _record: Any) -> None:
    # The driver prepares a statement run five times, and the server may then keep one generic
    # plan for it: a plan made while a table was small (a sequential scan) stays as the table
    # grows to millions of rows, until the next ANALYZE, and an `IN` of 500 ids went from
    # milliseconds to seconds. Every execution is planned for its own parameters instead.
    with dbapi_conn.cursor() as cur:
        cur.execute("SET plan_cache_mode = force_custom_plan")
    dbapi_conn.commit()


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself, so writers can take the write lock
    # up front (BEGIN IMMEDIATE) instead of upgrading a read lock and deadlocking.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # A new database gets 16 KiB pages (an existing one keeps its own: the size is fixed when
    # the first table is written). The log is written a page at a time, to the WAL and again at
    # each checkpoint, one system call per page: with pages four times the default size, ingest
    # spent about 0.85 µs of system time per event instead of 1.2, and ran 5-8% faster in three
    # paired runs of 400,000 events.
    cur.execute("PRAGMA page_size=16384")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get("edvex_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Ledger:
    """The append-only log and its projections in one database."""

    def __init__(self, engine: Engine, clock: Clock = _utcnow) -> None:
        self.engine = engine
        self._clock = clock
        self._url: str | None = None  # set by `open`, whose engine this ledger owns

    @classmethod
    def open(cls, url: str = DEFAULT_URL, clock: Clock = _utcnow) -> Ledger:
        try:
            ledger = cls(_engine(url), clock)
        except (SQLAlchemyError, ValueError) as e:
            raise StoreError(f"cannot open database {url!r}: {e}") from e
        ledger._url = url
        _OPENED.add(ledger)
        return ledger

    def _after_fork_in_child(self) -> None:
        """A forked child gets an engine of its own; the pooled connections it inherited stay
        the parent's, neither used nor closed here (`_INHERITED` keeps them from being
        collected, which would close them)."""
        if self._url is not None:
            _INHERITED.append(self.engine)
            self.engine = _engine(self._url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def clock(self) -> datetime:
        return self._clock()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # --- transactions -------------------------------------------------------------------------

    @contextmanager
    def _read(self, snapshot: bool = False) -> Iterator[Connection]:
        """A read transaction; `snapshot` makes every query of it see one state of the database
        on PostgreSQL too (SQLite's read transactions are snapshots already)."""
        try:
            with self.engine.connect() as conn:
                if snapshot and conn.dialect.name == "postgresql":
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except SQLAlchemyError as e:
            raise _translate(e) from e

    @contextmanager
    def _write(self) -> Iterator[tuple[Connection, Head]]:
        """A transaction holding the head of the log: one writer at a time (DESIGN.md)."""
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(edvex_write=True)
                with conn.begin():
                    yield conn, self._head(conn, lock=True)
        except SQLAlchemyError as e:
            raise _translate(e) from e

    @contextmanager
    def exclusive(self) -> Iterator[Connection]:
        """A write transaction holding the head of the log (for settlement's own tables)."""
        with self._write() as (conn, _head):
            yield conn

    # --- schema -------------------------------------------------------------------------------

    def initialised(self) -> bool:
        try:
            with self._read() as conn:
                return conn.dialect.has_table(conn, "log_head") and self._head(conn) is not None
        except (StoreError, IntegrityError):
            return False

    def create(self, currency: str, origin: str) -> bool:
        """Create the schema and the head row; False when the database was already set up."""
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(edvex_write=True)
                with conn.begin():
                    s.metadata.create_all(conn)
                    s.install_guards(conn)
                    if conn.execute(select(s.log_head.c.id)).first() is not None:
                        return False
                    conn.execute(
                        insert(s.log_head).values(
                            id=1, size=0, batches=0, recorded_at="", frontier=b"",
                            currency=currency, origin=origin,
                        )
                    )  # fmt: skip
                    return True
        except SQLAlchemyError as e:
            raise _translate(e) from e

    def initialise(self, operator: KeyPair, currency: str = "USD") -> bool:
        """Create the log and register the operator party; False when it already existed."""
        created = self.create(currency, f"edvex/{operator.public_hex[:16]}")
        if self.party(OPERATOR) is None:
            event = parse_event(
                {
                    "id": uuid7(),
                    "type": "party.registered",
                    "actor": OPERATOR,
                    "occurred_at": format_timestamp(self._clock()),
                    "body": {
                        "party": OPERATOR,
                        "kind": "operator",
                        "public_key": operator.public_hex,
                        "name": "operator",
                    },
                }
            )
            self.append(SignedBatch.sign(OPERATOR, operator, [event]))
        return created

    def _head(self, conn: Connection, lock: bool = False) -> Head:
        q = select(s.log_head).where(s.log_head.c.id == 1)
        if lock and conn.dialect.name == "postgresql":
            q = q.with_for_update()
        try:
            row = conn.execute(q).first()
        except SQLAlchemyError as e:
            raise StoreError(
                f"the database has no EDVEX log; run `edvex init` first ({_first_line(e)})"
            ) from e
        if row is None:
            raise StoreError("the database has no EDVEX log; run `edvex init` first")
        frontier = merkle.Frontier.from_bytes(row.size, row.frontier)
        return Head(row.size, row.batches, row.recorded_at, frontier, row.currency, row.origin)

    def head(self) -> Head:
        with self._read() as conn:
            return self._head(conn)

    # --- append -------------------------------------------------------------------------------

    def append(
        self, batch: SignedBatch, within: Callable[[Connection, AppendResult], None] | None = None
    ) -> AppendResult:
        """Append a signed batch whole, or nothing; resubmission of the same batch is a no-op.

        `within`, if given, runs in the same transaction after the batch is written (settlement
        records its run there), so both commit together or not at all.
        """
        self._check_batch_shape(batch)
        verify_signature(batch.key, batch.digest, batch.signature, f"batch of {batch.actor!r}")
        try:
            return self._append_new(batch, within)
        except (RuleViolation, ConstraintRefused) as refused:
            # Resubmissions are rare, so they are found here, after the fact, rather than
            # looked up before every batch: a batch already in the log breaks the unique
            # index on event ids (or, resubmitted after the state moved on, a rule), and then
            # idempotency decides what to answer.
            with self._read() as conn:
                known = self._known_ids(conn, batch)
            if known is not None:
                return known
            if isinstance(refused, RuleViolation):
                raise
            raise StoreError(f"database error: {refused}") from refused

    def _append_new(
        self, batch: SignedBatch, within: Callable[[Connection, AppendResult], None] | None
    ) -> AppendResult:
        """Append a batch assumed new; its events' ids, if already taken, make the insert fail."""
        with self._write() as (conn, head):
            recorded_at = max(format_timestamp(self._clock()), head.recorded_at)
            state = State(DbSource(conn))
            entries = batch.entries
            bodies = batch.usage_bodies
            models = batch.models
            state.prefetch([e.body for e in models.values()], bodies.values())
            check_signer(batch.actor, batch.key, _first_event(batch), state)
            effects: list[Effect] = []
            uses: list[UsageRow] = []
            first = head.size + 1
            run = 0  # the first event of the current run of uses
            actor = batch.actor
            for i, e in models.items():
                if type(e) is not UsageRecorded:  # most of the log is usage: checked in runs
                    if run < i:
                        uses += check_uses(actor, _uses(entries[run:i]), bodies, first + run,
                                           recorded_at, state)  # fmt: skip
                    effect = check(e, first + i, recorded_at, state)
                    state.apply(effect)
                    effects.append(effect)
                    run = i + 1
            if run < len(entries):
                uses += check_uses(actor, _uses(entries[run:]), bodies, first + run, recorded_at,
                                   state)  # fmt: skip
            result = self._insert(conn, head, batch, recorded_at)
            write_effects(conn, effects, uses)
            if within is not None:
                within(conn, result)
            return result

    @staticmethod
    def _check_batch_shape(batch: SignedBatch) -> None:
        entries = batch.entries
        if not entries:
            raise InvalidEvent(None, "events", "a batch needs at least one event")
        if len(entries) > MAX_BATCH:
            raise InvalidEvent(None, "events", f"a batch holds at most {MAX_BATCH} events")
        actor = batch.actor
        # a UsageEntry is the batch actor's by construction
        stranger = next((e for e in batch.models.values() if e.actor != actor), None)
        if stranger is not None:
            raise InvalidEvent(stranger.id, "actor",
                               f"all events of a batch have one actor ({actor!r}), got "
                               f"{stranger.actor!r}")  # fmt: skip
        ids = batch.ids
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            for i in ids:
                if i in seen:
                    raise InvalidEvent(i, "id", "the id appears twice in one batch")
                seen.add(i)

    def _known_ids(self, conn: Connection, batch: SignedBatch) -> AppendResult | None:
        """Idempotency: all known with equal hashes is the original result; a mix is an error."""
        found: dict[str, tuple[int, bytes, str]] = {}
        ids = batch.ids
        c = s.events.c
        for chunk in _id_lists(conn, ids):
            q = select(c.id, c.seq, c.hash, c.recorded_at).where(chunk(c.id))
            found.update({r.id: (r.seq, bytes(r.hash), r.recorded_at) for r in conn.execute(q)})
        if not found:
            return None
        for event_id, h in zip(ids, batch.hashes, strict=True):
            if event_id in found and found[event_id][1] != h:
                seq, stored, _ = found[event_id]
                raise ConflictError(event_id, seq, h.hex()[:16], stored.hex()[:16])
        if len(found) < len(ids):
            raise PartialDuplicate({i: found[i][0] for i in ids if i in found})
        seqs = tuple(found[i][0] for i in ids)
        return AppendResult(None, seqs, found[ids[0]][2])

    def _insert(
        self, conn: Connection, head: Head, batch: SignedBatch, recorded_at: str
    ) -> AppendResult:
        first = head.size + 1
        number = head.batches + 1
        last = first + len(batch.entries) - 1
        # each event was encoded once (`SignedBatch.encoded`); the leaf is built around it
        member = recorded_at_member(recorded_at)
        encoded = batch.encoded
        leaves = merkle.leaf_hashes([h + member + t for _body, h, t in encoded])
        actor = batch.actor
        rows = [  # the order of s.events.columns
            (seq, e[0], "usage.recorded", actor, e[1], recorded_at, e[2], h, leaf, number)
            if isinstance(e, tuple) else
            (seq, e.id, e.type, e.actor, e.occurred_at, recorded_at, enc[0].decode(), h, leaf,
             number)
            for seq, e, enc, h, leaf in zip(
                range(first, last + 1), batch.entries, encoded, batch.hashes, leaves, strict=True
            )
        ]  # fmt: skip
        frontier = merkle.Frontier(head.frontier.size, list(head.frontier.hashes))
        nodes = frontier.extend(leaves, min_level=NODE_LEVEL)
        conn.execute(
            insert(s.batches).values(
                batch=number,
                actor=batch.actor,
                key=batch.key,
                digest=batch.digest,
                signature=batch.signature,
                first_seq=first,
                last_seq=last,
            )
        )
        insert_rows(conn, s.events, rows)
        insert_rows(conn, s.tree_nodes, nodes)  # (level, idx, hash): the table's column order
        conn.execute(
            update(s.log_head)
            .where(s.log_head.c.id == 1)
            .values(
                size=last, batches=number, recorded_at=recorded_at, frontier=frontier.to_bytes()
            )
        )
        return AppendResult(number, tuple(range(first, last + 1)), recorded_at)

    # --- reading ------------------------------------------------------------------------------

    def records(self, upto: int | None = None) -> Iterator[BatchRecord | EventRecord]:
        """Batches and events in `seq` order, each batch before its events (the export order)."""
        with self._read() as conn:
            size = self._head(conn).size if upto is None else upto
            yield from self._records(conn, size)

    @staticmethod
    def _batch_records(conn: Connection, size: int) -> Iterator[BatchRecord]:
        b = s.batches.c
        rows = conn.execute(select(s.batches).where(b.first_seq <= size).order_by(b.batch))
        return iter([_batch_record(r) for r in rows])

    @staticmethod
    def _row_chunks(conn: Connection, size: int) -> Iterator[list[StoredRow]]:
        """Event rows up to `size` as plain tuples (`StoredRow`), a chunk at a time, read
        through the driver: verification reads every row of the log."""
        mark = "%s" if conn.dialect.name == "postgresql" else "?"
        columns = ", ".join(c.name for c in s.events.columns)
        sql = f"SELECT {columns} FROM events WHERE seq BETWEEN {mark} AND {mark} ORDER BY seq"
        raw = conn.connection.driver_connection
        assert raw is not None
        bounds = [(start, min(size, start + _READ_CHUNK - 1))
                  for start in range(1, size + 1, _READ_CHUNK)]  # fmt: skip
        if conn.dialect.name != "postgresql" or not psycopg.Pipeline.is_supported():
            for b in bounds:
                rows = raw.execute(sql, b).fetchall()
                if rows:
                    yield rows
            return
        # PostgreSQL: binary results, so hashes arrive as bytes rather than hex text to decode;
        # and the next chunk's query goes out (pipeline mode) before this chunk is handed over,
        # so the server reads and sends it while the caller checks this one.
        with raw.pipeline():
            queries = (raw.cursor(binary=True).execute(sql, b) for b in bounds)  # sent when made
            ahead = next(queries, None)
            while ahead is not None:
                current, ahead = ahead, next(queries, None)
                rows = current.fetchall()
                if rows:
                    yield rows

    @staticmethod
    def _records(
        conn: Connection, size: int, parse: bool = True
    ) -> Iterator[BatchRecord | EventRecord]:
        batches = Ledger._batch_records(conn, size)
        pending = next(batches, None)
        for start in range(1, size + 1, _READ_CHUNK):
            q = (
                select(s.events)
                .where(s.events.c.seq.between(start, min(size, start + _READ_CHUNK - 1)))
                .order_by(s.events.c.seq)
            )
            for row in conn.execute(q).all():
                while pending is not None and pending.first_seq <= row.seq:
                    yield pending
                    pending = next(batches, None)
                yield _event_record(row, parse)

    def events_of(self, types: Sequence[str], upto: int) -> Iterator[EventRecord]:
        with self._read() as conn:
            q = (
                select(s.events)
                .where(s.events.c.type.in_(types), s.events.c.seq <= upto)
                .order_by(s.events.c.seq)
            )
            for row in conn.execute(q):
                yield _event_record(row)

    def find_events(self, ids: Sequence[str]) -> dict[str, EventRecord]:
        """The stored events with these client ids, by id."""
        out: dict[str, EventRecord] = {}
        with self._read() as conn:
            for chunk in _id_lists(conn, list(ids)):
                for row in conn.execute(select(s.events).where(chunk(s.events.c.id))):
                    out[row.id] = _event_record(row)
        return out

    def event_at(self, seq: int) -> EventRecord | None:
        with self._read() as conn:
            row = conn.execute(select(s.events).where(s.events.c.seq == seq)).first()
            return _event_record(row) if row is not None else None

    def party(self, party: str) -> Mapping[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(select(s.parties).where(s.parties.c.party == party)).first()
            return row._asdict() if row is not None else None

    def parties(self) -> list[Mapping[str, Any]]:
        with self._read() as conn:
            return [
                r._asdict() for r in conn.execute(select(s.parties).order_by(s.parties.c.party))
            ]

    def asset(self, asset: str) -> Mapping[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(select(s.assets).where(s.assets.c.asset == asset)).first()
            return row._asdict() if row is not None else None

    def assets(self, ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        """Several assets' rows at once, by id."""
        out: dict[str, Mapping[str, Any]] = {}
        with self._read() as conn:
            for chunk in _id_lists(conn, list(ids)):
                for row in conn.execute(select(s.assets).where(chunk(s.assets.c.asset))):
                    out[row.asset] = row._asdict()
        return out

    def grants_on(self, asset: str) -> list[Grant]:
        with self._read() as conn:
            q = select(s.grants).where(s.grants.c.asset == asset).order_by(s.grants.c.seq)
            return [grant_from_row(r) for r in conn.execute(q)]

    def parents_of(self, assets: Sequence[str]) -> dict[str, list[Any]]:
        """Lineage edges from each child in `assets` to its parents."""
        out: dict[str, list[Any]] = {a: [] for a in assets}
        with self._read() as conn:
            for i in range(0, len(assets), _ID_CHUNK):
                q = select(s.edges).where(s.edges.c.child.in_(assets[i : i + _ID_CHUNK]))
                for r in conn.execute(q.order_by(s.edges.c.parent)):
                    out[r.child].append(edge_from_row(r))
        return out

    def usage_count(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(s.usage)).scalar_one())

    # --- the tree -----------------------------------------------------------------------------

    def _node_getter(self, conn: Connection) -> merkle.NodeGetter:
        def get(coords: Sequence[tuple[int, int]]) -> Mapping[tuple[int, int], bytes]:
            out: dict[tuple[int, int], bytes] = {}
            for level, idx in coords:
                out[(level, idx)] = self._node(conn, level, idx)
            return out

        return get

    def _node(self, conn: Connection, level: int, idx: int) -> bytes:
        if level >= NODE_LEVEL:
            t = s.tree_nodes.c
            row = conn.execute(select(t.hash).where(t.level == level, t.idx == idx)).first()
            if row is None:
                raise IntegrityError(None, "tree", f"missing node level {level} index {idx}")
            return bytes(row.hash)
        first, last = idx << level, ((idx + 1) << level) - 1
        c = s.events.c
        q = select(c.leaf).where(c.seq.between(first + 1, last + 1)).order_by(c.seq)
        leaves = [bytes(r.leaf) for r in conn.execute(q)]
        if len(leaves) != 1 << level:
            raise IntegrityError(first + 1, "tree", "leaves missing under a subtree")
        return merkle.root_from_leaves(leaves)

    def _size_arg(self, head: Head, size: int | None) -> int:
        size = head.size if size is None else size
        if not 0 <= size <= head.size:
            raise InvalidEvent(None, "size", f"tree size {size} is not in 0..{head.size}")
        return size

    def root_at(self, size: int) -> bytes:
        with self._read() as conn:
            size = self._size_arg(self._head(conn), size)
            return merkle.root(size, self._node_getter(conn))

    def inclusion_proof(self, seq: int, size: int | None = None) -> dict[str, Any]:
        """RFC 9162 section 2.1.3 proof of event `seq` (leaf index seq - 1) in the tree of size."""
        with self._read() as conn:
            size = self._size_arg(self._head(conn), size)
            if not 1 <= seq <= size:
                raise InvalidEvent(None, "seq", f"seq {seq} is not in 1..{size}")
            get = self._node_getter(conn)
            proof = merkle.inclusion_proof(seq - 1, size, get)
            leaf = self._node(conn, 0, seq - 1)
            return {
                "leaf_index": seq - 1,
                "tree_size": size,
                "leaf_hash": leaf.hex(),
                "root": merkle.root(size, get).hex(),
                "proof": [p.hex() for p in proof],
            }

    def consistency_proof(self, size1: int, size2: int | None = None) -> dict[str, Any]:
        """RFC 9162 section 2.1.4 proof that the tree of size2 extends the tree of size1."""
        with self._read() as conn:
            head = self._head(conn)
            size2 = self._size_arg(head, size2)
            if not 1 <= size1 <= size2:
                raise InvalidEvent(None, "size", f"size {size1} is not in 1..{size2}")
            get = self._node_getter(conn)
            proof = merkle.consistency_proof(size1, size2, get)
            return {
                "size1": size1,
                "size2": size2,
                "root1": merkle.root(size1, get).hex(),
                "root2": merkle.root(size2, get).hex(),
                "proof": [p.hex() for p in proof],
            }

    # --- checkpoints --------------------------------------------------------------------------

    def checkpoint(self, operator: KeyPair, size: int | None = None) -> dict[str, Any]:
        """Sign (size, root) at `size` (default: now), after checking it agrees with the last
        checkpoint signed."""
        with self._write() as (conn, head):
            size = self._size_arg(head, size)
            op = conn.execute(select(s.parties).where(s.parties.c.party == OPERATOR)).first()
            if op is None or op.public_key != operator.public_hex:
                raise StoreError("the key given is not the operator's current key")
            existing = conn.execute(
                select(s.checkpoints).where(s.checkpoints.c.size == size)
            ).first()
            if existing is not None:
                return _checkpoint_dict(existing)
            get = self._node_getter(conn)
            self._check_agrees_with_last(conn, get)
            root = merkle.root(size, get)
            note = sign_checkpoint(
                Checkpoint(head.origin, size, root), head.origin, operator.signing_key
            )
            conn.execute(insert(s.checkpoints).values(size=size, root=root, note=note))
            return {"size": size, "root": root.hex(), "note": note}

    def _check_agrees_with_last(self, conn: Connection, get: merkle.NodeGetter) -> None:
        # DESIGN.md: the operator never signs two checkpoints inconsistent with each other; the
        # tree it signs from must still have the root of the last checkpoint it signed.
        last = conn.execute(
            select(s.checkpoints).order_by(s.checkpoints.c.size.desc()).limit(1)
        ).first()
        if last is None:
            return
        if merkle.root(last.size, get) != bytes(last.root):
            raise IntegrityError(last.size, "checkpoint", "the log no longer has this root")

    def checkpoints(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(select(s.checkpoints).order_by(s.checkpoints.c.size))
            return [_checkpoint_dict(r) for r in rows]

    def latest_checkpoint(self, upto: int | None = None) -> dict[str, Any] | None:
        with self._read() as conn:
            q = select(s.checkpoints).order_by(s.checkpoints.c.size.desc()).limit(1)
            if upto is not None:
                q = q.where(s.checkpoints.c.size <= upto)
            row = conn.execute(q).first()
            return _checkpoint_dict(row) if row is not None else None

    # --- verify and rebuild -------------------------------------------------------------------

    def verify(self, progress: Callable[[int], None] | None = None) -> AuditReport:
        """Recompute every hash, digest, signature and the tree; raise at the first bad seq."""
        auditor = Auditor(keep_nodes_from=NODE_LEVEL)
        with self._read(snapshot=True) as conn:
            head = self._head(conn)
            stored_nodes = self._stored_nodes(conn)
            batches = self._batch_records(conn, head.size)
            pending = next(batches, None)
            for rows in self._row_chunks(conn, head.size):
                i = 0
                while i < len(rows):
                    seq = rows[i][0]
                    while pending is not None and pending.first_seq <= seq:
                        auditor.batch(pending)
                        pending = next(batches, None)
                    # the rows up to where the next batch starts
                    stop = len(rows) if pending is None else i + max(1, pending.first_seq - seq)
                    auditor.stored_events(rows[i:stop])
                    i = stop
                self._compare_nodes(auditor, stored_nodes)
                if progress is not None:
                    progress(rows[-1][0])
            report = auditor.finish()
            self._check_nothing_past_head(conn, head)
            self._compare_nodes(auditor, stored_nodes)
            if stored_nodes:
                (level, idx), _ = next(iter(stored_nodes.items()))
                raise IntegrityError((idx << level) + 1, "tree", "a stored node has no leaves")
            self._compare_head(head, report)
            self._compare_checkpoints(conn, auditor, report)
            return report

    def missing_guards(self) -> list[str]:
        """Append-only triggers that someone dropped (verification still recomputes all)."""
        with self._read() as conn:
            return s.missing_guards(conn)

    @staticmethod
    def _check_nothing_past_head(conn: Connection, head: Head) -> None:
        """Rows the head does not count are forgeries too (or a half-written append)."""
        count, top = conn.execute(select(func.count(), func.max(s.events.c.seq))).one()
        if count != head.size or (top or 0) != head.size:
            raise IntegrityError(head.size + 1, "log size", f"head says {head.size} events, "
                                 f"the table holds {count} up to seq {top}")  # fmt: skip
        batches = conn.execute(select(func.count()).select_from(s.batches)).scalar_one()
        if batches != head.batches:
            raise IntegrityError(head.size + 1, "batches", f"head says {head.batches}, "
                                 f"the table holds {batches}")  # fmt: skip

    def _stored_nodes(self, conn: Connection) -> dict[tuple[int, int], bytes]:
        rows = conn.exec_driver_sql("SELECT level, idx, hash FROM tree_nodes").fetchall()
        return {(level, idx): bytes(h) for level, idx, h in rows}

    @staticmethod
    def _compare_nodes(auditor: Auditor, stored: dict[tuple[int, int], bytes]) -> None:
        for level, idx, h in auditor.new_nodes:
            if level < NODE_LEVEL:
                continue
            got = stored.pop((level, idx), None)
            if got != h:
                what = "missing" if got is None else "differs"
                raise IntegrityError(
                    (idx << level) + 1, "tree", f"stored node {what} (level {level}, index {idx})"
                )
        auditor.new_nodes.clear()

    @staticmethod
    def _compare_head(head: Head, report: AuditReport) -> None:
        if head.size != report.size:
            raise IntegrityError(report.size + 1, "log size", f"head says {head.size}")
        if head.root != report.root:
            raise IntegrityError(head.size, "tree root", "head frontier differs from the events")
        if head.batches != report.batches:
            raise IntegrityError(
                None, "batches", f"head says {head.batches}, found {report.batches}"
            )

    def _compare_checkpoints(self, conn: Connection, auditor: Auditor, report: AuditReport) -> None:
        get = self._node_getter(conn)
        for row in conn.execute(select(s.checkpoints).order_by(s.checkpoints.c.size)):
            if row.size > report.size or merkle.root(row.size, get) != bytes(row.root):
                raise IntegrityError(row.size, "checkpoint", "signed root differs from the log")

    def restore(
        self,
        records: Iterable[BatchRecord | EventRecord],
        currency: str,
        origin: str = "edvex/restored",
    ) -> AuditReport:
        """Load an exported log into this empty database, checking every hash and signature on
        the way, then replay it into the projections (rules included)."""
        self.create(currency, origin)
        auditor = Auditor()
        with self._write() as (conn, head):
            if head.size:
                raise StoreError("restore needs an empty log")
            rows: list[tuple[Any, ...]] = []
            for rec in records:
                if isinstance(rec, BatchRecord):
                    auditor.batch(rec)
                    conn.execute(
                        insert(s.batches).values(
                            batch=rec.batch,
                            actor=rec.actor,
                            key=rec.key,
                            digest=rec.digest,
                            signature=rec.signature,
                            first_seq=rec.first_seq,
                            last_seq=rec.last_seq,
                        )
                    )
                    continue
                leaf = auditor.event(rec)
                rows.append(_event_row(rec, leaf))
                if len(rows) >= _READ_CHUNK:
                    self._restore_rows(conn, auditor, rows)
            self._restore_rows(conn, auditor, rows)
            report = auditor.finish()
            conn.execute(
                update(s.log_head)
                .where(s.log_head.c.id == 1)
                .values(
                    size=report.size,
                    batches=report.batches,
                    recorded_at=auditor.last_recorded_at,
                    frontier=auditor.frontier.to_bytes(),
                )
            )
        self.rebuild()
        return report

    @staticmethod
    def _restore_rows(conn: Connection, auditor: Auditor, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            insert_rows(conn, s.events, rows)
            rows.clear()
        insert_rows(conn, s.tree_nodes, [n for n in auditor.new_nodes if n[0] >= NODE_LEVEL])
        auditor.new_nodes.clear()

    def rebuild(self, progress: Callable[[int], None] | None = None) -> int:
        """Drop the projections and replay the log into them; returns the events replayed."""
        with self._write() as (conn, head):
            # dropped and made anew, so a database from an earlier version gets today's tables
            for table in reversed(s.PROJECTIONS):
                table.drop(conn, checkfirst=True)
            s.metadata.create_all(conn, tables=list(s.PROJECTIONS))
            state = State(EmptySource())
            firsts = {
                r.first_seq: (r.actor, r.key)
                for r in conn.execute(
                    select(s.batches.c.first_seq, s.batches.c.actor, s.batches.c.key)
                )
            }
            for start in range(1, head.size + 1, _READ_CHUNK):
                q = (
                    select(s.events)
                    .where(s.events.c.seq.between(start, start + _READ_CHUNK - 1))
                    .order_by(s.events.c.seq)
                )
                effects = []
                for row in conn.execute(q).all():
                    e = parse_event(_signed_from_row(row))
                    if row.seq in firsts:
                        actor, key = firsts[row.seq]
                        check_signer(actor, key, e, state)
                    effect = check(e, row.seq, row.recorded_at, state)
                    state.apply(effect)
                    effects.append(effect)
                write_effects(conn, effects)
                if progress is not None:
                    progress(min(head.size, start + _READ_CHUNK - 1))
            return head.size


def _uses(entries: Sequence[Entry]) -> Sequence[UsageRecorded | UsageEntry]:
    return cast("Sequence[UsageRecorded | UsageEntry]", entries)  # a run the caller found all uses


def _first_event(batch: SignedBatch) -> Event:
    """The batch's first event as a model (the signer's check reads it)."""
    first = batch.entries[0]
    if isinstance(first, tuple):
        return entry_event(batch.actor, first, batch.usage_bodies[first[2]])
    return first


def _id_lists(conn: Connection, ids: list[str]) -> Iterator[Callable[[Any], Any]]:
    """Conditions `column IN ids`: one array parameter on PostgreSQL (one plan for any count),
    chunks of literal lists on SQLite."""
    if conn.dialect.name == "postgresql":
        yield lambda col: col == any_(bindparam("ids", ids, type_=ARRAY(String)))
        return
    for i in range(0, len(ids), _ID_CHUNK):
        yield partial(_in_list, part=ids[i : i + _ID_CHUNK])


def _in_list(col: Any, part: list[str]) -> Any:
    # one expanding parameter: the statement compiles once and is cached, whatever the ids
    return col.in_(bindparam("ids", part, expanding=True))


def _event_row(rec: EventRecord, leaf: bytes) -> tuple[Any, ...]:
    """An event row in the order of `s.events.columns`."""
    body = canonical_bytes(rec.body).decode()
    return (rec.seq, rec.id, rec.type, rec.actor, rec.occurred_at, rec.recorded_at, body,
            rec.hash, leaf, rec.batch)  # fmt: skip


def _signed_from_row(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "type": row.type,
        "actor": row.actor,
        "occurred_at": row.occurred_at,
        "body": json.loads(row.body),
    }


def _event_record(row: Any, parse: bool = True) -> EventRecord:
    return EventRecord(
        seq=row.seq,
        id=row.id,
        type=row.type,
        actor=row.actor,
        occurred_at=row.occurred_at,
        recorded_at=row.recorded_at,
        body=json.loads(row.body) if parse else {},
        hash=bytes(row.hash),
        batch=row.batch,
        body_text=row.body,
        leaf=bytes(row.leaf),
    )


def _batch_record(row: Any) -> BatchRecord:
    return BatchRecord(
        row.batch,
        row.actor,
        row.key,
        bytes(row.digest),
        bytes(row.signature),
        row.first_seq,
        row.last_seq,
    )


def _checkpoint_dict(row: Any) -> dict[str, Any]:
    return {"size": row.size, "root": bytes(row.root).hex(), "note": row.note}


def _first_line(e: SQLAlchemyError) -> str:
    orig = e.orig if isinstance(e, DBAPIError) and e.orig is not None else e
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def _translate(e: SQLAlchemyError) -> LedgerError:
    return StoreError(f"database error: {_first_line(e)}")
