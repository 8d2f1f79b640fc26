"""`edvex usage import`: read a whole JSONL or CSV file of usage, check it, then append it.

A line without an `id` gets one derived from the party, the file name, the line's content and how
many identical lines came before it, so importing the same file again adds nothing twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.progress import Progress

from ledger import Client, Ledger, LedgerError, RuleViolation
from ledger.audit import EventRecord
from ledger.canonical import canonical_bytes, loads_strict
from ledger.errors import InvalidEvent
from ledger.events import Event, body_dict, parse_event
from ledger.values import amount_micros, format_timestamp

from .common import fail

_FIELDS = {"asset", "units", "revenue", "id", "grant"}
_DIGITS = re.compile(r"[0-9]{1,16}")


@dataclass(frozen=True)
class Line:
    number: int
    event: Event


def read_usage_file(path: Path, party: str) -> list[Line]:
    """Parse and validate every line; the first bad one stops everything, naming its number."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        fail(f"{path}: cannot read ({e.strerror})")
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        fail(f"{path}: line {line}: invalid UTF-8 at byte {e.start}")
    records = _csv_records(content) if path.suffix.lower() == ".csv" else _jsonl_records(content)
    now = format_timestamp(datetime.now(UTC))
    seen: Counter[bytes] = Counter()
    lines = []
    for number, record in records:
        try:
            lines.append(Line(number, _event(record, party, path.name, now, seen)))
        except (LedgerError, ValueError) as e:
            fail(f"{path}: line {number}: {e}")
    if not lines:
        fail(f"{path}: no usage lines")
    return lines


def _jsonl_records(content: str) -> list[tuple[int, Any]]:
    out = []
    for number, text in enumerate(content.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            out.append((number, loads_strict(text, where="line")))
        except InvalidEvent as e:
            fail(f"line {number}: not valid JSON ({e.reason})")
    return out


def _csv_records(content: str) -> list[tuple[int, Any]]:
    reader = csv.reader(io.StringIO(content, newline=""))
    header = next(reader, None)
    if header is None or "asset" not in header or "units" not in header:
        fail("CSV needs a header line with asset,units[,revenue][,id]")
    unknown = set(header) - _FIELDS
    if unknown:
        fail(f"CSV header: unknown column(s) {', '.join(repr(u) for u in sorted(unknown))}")
    out = []
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            fail(f"line {number}: {len(row)} fields, the header has {len(header)}")
        record: dict[str, Any] = {k: v for k, v in zip(header, row, strict=True) if v != ""}
        units = record.get("units", "")
        if not _DIGITS.fullmatch(units):
            fail(f"line {number}: units must be a whole number, got {units!r}")
        record["units"] = int(units)
        out.append((number, record))
    return out


def _event(record: Any, party: str, source: str, now: str, seen: Counter[bytes]) -> Event:
    if not isinstance(record, dict):
        raise ValueError("each line must be a JSON object")
    unknown = set(record) - _FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(repr(u) for u in sorted(unknown))}")
    revenue = record.get("revenue")
    if revenue is not None and not isinstance(revenue, str):
        raise ValueError('revenue must be a decimal string such as "0.35"')
    body = {k: record[k] for k in ("asset", "units", "grant") if k in record}
    if revenue is not None:
        body["revenue"] = amount_micros(revenue, "revenue")
    event_id = record.get("id")
    if event_id is None:
        content = canonical_bytes({"party": party, "file": source, "line": body})
        seen[content] += 1
        event_id = "imp-" + hashlib.sha256(content + b"#%d" % seen[content]).hexdigest()[:32]
    return parse_event(
        {"id": event_id, "type": "usage.recorded", "actor": party, "occurred_at": now, "body": body}
    )


def append_lines(
    ledger: Ledger, client: Client, lines: list[Line], batch_size: int, bar: Progress
) -> dict[str, Any]:
    """Append in batches; a rejected batch stops the import, naming the line."""
    by_id = {line.event.id: line.number for line in lines}
    appended = already = 0
    with bar:
        task = bar.add_task("importing", total=len(lines))
        for start in range(0, len(lines), batch_size):
            part = lines[start : start + batch_size]
            chunk = _not_yet_imported(ledger, part)
            already += len(part) - len(chunk)
            try:
                results = client.append_events(chunk) if chunk else []
            except RuleViolation as e:
                number = by_id.get(e.event_id, 0)
                kept = (
                    f"lines before line {part[0].number} were appended"
                    if start
                    else ("nothing was appended")
                )
                fail(f"line {number}: {e} ({kept})")
            new = sum(len(r.seqs) for r in results if not r.duplicate)
            appended += new
            already += len(chunk) - new
            bar.advance(task, len(part))
    return {"lines": len(lines), "appended": appended, "already": already}


def same_use(stored: EventRecord, event: Event) -> bool:
    """The stored event is `event` but for `occurred_at` (a re-run stamps a new time)."""
    return (stored.type, stored.actor, dict(stored.body)) == (
        event.type, event.actor, body_dict(event),
    )  # fmt: skip


def _not_yet_imported(ledger: Ledger, part: list[Line]) -> list[Event]:
    """Lines whose id is in the log with the same usage (only `occurred_at`, the time of the
    import, may differ) were imported before: they are skipped. The same id with other usage
    is an error naming the line."""
    known = ledger.find_events([line.event.id for line in part])
    fresh = []
    for line in part:
        stored = known.get(line.event.id)
        if stored is None:
            fresh.append(line.event)
            continue
        if not same_use(stored, line.event):
            fail(
                f"line {line.number}: id {line.event.id!r} is already in the log "
                f"(seq {stored.seq}) with other content"
            )
    return fresh
