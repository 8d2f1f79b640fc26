"""Commands that append to the log: init, party, asset, consent, derive, usage."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ledger import Client, KeyPair, Ledger, write_key
from ledger.client import to_micros
from ledger.events import usage_event
from ledger.store import OPERATOR
from ledger.values import now_timestamp

from . import imports
from .common import (
    client_for,
    common_options,
    emit,
    fail,
    handled,
    key_path,
    open_ledger,
    out,
    progress,
    settings,
)


@click.command()
@click.option("--currency", default="USD", show_default=True, help="the ledger currency")
@common_options
def init(currency: str) -> None:
    """Create the schema, the operator party and its key (keys/operator.key)."""
    with handled():
        path = key_path(OPERATOR)
        led = Ledger.open(settings().db)
        try:
            if led.initialised():
                op = led.party(OPERATOR)
                public = op["public_key"] if op else ""
                emit(
                    {"operator": OPERATOR, "public_key": public, "created": False},
                    lambda: out.print(f"already initialised: {settings().db}"),
                )
                return
            if path.exists():
                fail(f"{path} exists but {settings().db} has no log; move the old key away first")
            key = KeyPair.generate()
            write_key(path, key)
            path.with_suffix(".pub").write_text(key.public_hex + "\n")
            led.initialise(key, currency)
        finally:
            led.close()
        emit(
            {"operator": OPERATOR, "public_key": key.public_hex, "created": True},
            lambda: out.print(
                f"initialised {settings().db}; operator key {key.public_hex} in {path}"
            ),
        )


@click.group()
def party() -> None:
    """Parties: creators, aggregators, developers, deployers, collectives."""


@party.command("register")
@click.argument("name")
@click.option(
    "--kind",
    required=True,
    type=click.Choice(["creator", "aggregator", "developer", "deployer", "collective"]),
)
@click.option("--display-name", default=None, help="a human name (default: NAME)")
@common_options
def party_register(name: str, kind: str, display_name: str | None) -> None:
    """Make a new key in the keys dir and register NAME with a self-signed event."""
    with handled():
        path = key_path(name)
        led = open_ledger()
        try:
            if led.party(name) is not None:
                fail(f"party {name!r} is already registered")
            key = KeyPair.generate()
            write_key(path, key)
            try:
                with Client(led, name, key, max_delay=0) as client:
                    client.register_party(kind, display_name)
            except BaseException:
                path.unlink()  # nothing was registered: leave no orphan key behind
                raise
            path.with_suffix(".pub").write_text(key.public_hex + "\n")
        finally:
            led.close()
        emit(
            {"party": name, "kind": kind, "public_key": key.public_hex},
            lambda: out.print(f"registered {kind} {name} (key {key.public_hex})"),
        )


@party.command("list")
@common_options
def party_list() -> None:
    """The registered parties."""
    with handled():
        led = open_ledger()
        rows = led.parties()
        led.close()
        doc = [
            {
                "party": r["party"],
                "kind": r["kind"],
                "name": r["name"],
                "public_key": r["public_key"],
            }
            for r in rows
        ]

        def human() -> None:
            table = Table("party", "kind", "name", "public key")
            for r in doc:
                table.add_row(r["party"], r["kind"], r["name"], r["public_key"][:16] + "…")
            out.print(table)

        emit(doc, human)


def _append_one(by: str, build: Any) -> str:
    """Open the ledger, add one event as `by`, flush; returns what `build` returned."""
    led = open_ledger()
    try:
        with client_for(led, by) as client:
            return str(build(client))
    finally:
        led.close()


@click.group()
def asset() -> None:
    """Assets: data items, datasets, models and outputs."""


@asset.command("register")
@click.argument("asset_id", metavar="ID")
@click.option("--by", "by", required=True, help="the owning party")
@click.option("--kind", required=True, type=click.Choice(["data", "dataset", "model", "output"]))
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="hash this file's content",
)
@click.option("--content-hash", default=None, help="sha256 of the content, hex")
@click.option("--uri", default=None)
@common_options
def asset_register(
    asset_id: str, by: str, kind: str, file: Path | None, content_hash: str | None, uri: str | None
) -> None:
    """Register asset ID owned by --by."""
    with handled():
        if file is not None and content_hash is not None:
            fail("give --file or --content-hash, not both")
        if file is not None:
            content_hash = _sha256_file(file)
        _append_one(
            by, lambda c: c.register_asset(asset_id, kind, content_hash=content_hash, uri=uri)
        )
        emit(
            {"asset": asset_id, "kind": kind, "owner": by, "content_hash": content_hash},
            lambda: out.print(f"registered {kind} {asset_id} owned by {by}"),
        )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@click.group()
def consent() -> None:
    """Consent grants and revocations."""


def _tier(text: str) -> tuple[int | None, str]:
    up_to, sep, price = text.partition(":")
    if not sep:
        fail(f"--tier {text!r}: write UP_TO:PRICE, the last one *:PRICE")
    if up_to == "*":
        return None, price
    if not up_to.isdigit():
        fail(f"--tier {text!r}: UP_TO must be a whole number of units or *")
    return int(up_to), price


@consent.command("grant")
@click.argument("asset_id", metavar="ASSET")
@click.option("--by", "by", required=True, help="the owner granting consent")
@click.option("--to", "to", required=True, help="the grantee party, or '*' for anyone")
@click.option("--purpose", required=True, help="train, finetune, derive, infer, generate (a,b)")
@click.option("--share", default=None, help="revenue or value share in [0, 1], e.g. 0.1")
@click.option("--per-unit", default=None, help="price per usage unit, e.g. 0.002")
@click.option("--tier", "tiers", multiple=True, help="UP_TO:PRICE, in order; the last is *:PRICE")
@click.option("--minimum", default=None, help="amount owed per cycle, e.g. 50.00")
@click.option("--from", "valid_from", default=None, help="RFC 3339 start (default: now)")
@click.option("--until", default=None, help="RFC 3339 end (exclusive)")
@click.option("--id", "grant_id", default=None, help="the grant id (default: a new UUIDv7)")
@common_options
def consent_grant(
    asset_id: str,
    by: str,
    to: str,
    purpose: str,
    share: str | None,
    per_unit: str | None,
    tiers: tuple[str, ...],
    minimum: str | None,
    valid_from: str | None,
    until: str | None,
    grant_id: str | None,
) -> None:
    """Grant --to consent on ASSET for --purpose under the given terms; prints the grant id."""
    with handled():
        purposes = [p.strip() for p in purpose.split(",") if p.strip()]
        tier_list = [_tier(t) for t in tiers] or None
        grant = _append_one(
            by,
            lambda c: c.grant_consent(
                asset_id,
                to,
                purposes,
                share=share,
                per_unit=per_unit,
                tiers=tier_list,
                minimum=minimum,
                valid_from=valid_from,
                valid_until=until,
                grant=grant_id,
            ),
        )
        emit(
            {"grant": grant, "asset": asset_id, "grantee": to, "purposes": purposes},
            lambda: out.print(grant, markup=False),
        )


@consent.command("revoke")
@click.argument("grant")
@click.option("--by", "by", required=True, help="the grantor")
@common_options
def consent_revoke(grant: str, by: str) -> None:
    """Revoke GRANT; uses after this point of the log are refused."""
    with handled():
        _append_one(by, lambda c: c.revoke_consent(grant))
        emit({"grant": grant, "revoked": True}, lambda: out.print(f"revoked {grant}"))


def _parent(text: str) -> tuple[str, str, str]:
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        fail(f"--from {text!r}: write ASSET:WEIGHT:GRANT")
    return parts[0], parts[1], parts[2]


@click.command()
@click.argument("child", metavar="CHILD")
@click.option("--by", "by", required=True, help="the party deriving (becomes the owner)")
@click.option("--kind", required=True, type=click.Choice(["data", "dataset", "model", "output"]))
@click.option("--purpose", required=True, type=click.Choice(["derive", "train", "finetune"]))
@click.option("--from", "parents", multiple=True, required=True, help="ASSET:WEIGHT:GRANT")
@click.option("--content-hash", default=None)
@click.option("--uri", default=None)
@common_options
def derive(
    child: str,
    by: str,
    kind: str,
    purpose: str,
    parents: tuple[str, ...],
    content_hash: str | None,
    uri: str | None,
) -> None:
    """Register CHILD derived from parents under their grants."""
    with handled():
        plist = [_parent(p) for p in parents]
        _append_one(
            by, lambda c: c.derive(child, kind, purpose, plist, content_hash=content_hash, uri=uri)
        )
        emit(
            {
                "asset": child,
                "kind": kind,
                "owner": by,
                "parents": [{"asset": a, "weight": w, "grant": g} for a, w, g in plist],
            },
            lambda: out.print(f"derived {kind} {child} from {len(plist)} parent(s)"),
        )


@click.group()
def usage() -> None:
    """Usage of assets: one event per use, or a file of them."""


@usage.command("record")
@click.argument("asset_id", metavar="ASSET")
@click.option("--by", "by", required=True, help="the party using the asset")
@click.option("--units", required=True, type=click.IntRange(min=0))
@click.option("--revenue", default=None, help="revenue earned from this use, e.g. 0.35")
@click.option("--grant", default=None, help="the grant used (default: resolved by the ledger)")
@click.option("--id", "event_id", default=None, help="event id, e.g. a request id")
@common_options
def usage_record(
    asset_id: str, by: str, units: int, revenue: str | None, grant: str | None, event_id: str | None
) -> None:
    """Record one use of ASSET; with --id, running it again is a no-op."""
    with handled():
        led = open_ledger()
        try:
            if event_id is not None and _recorded_before(led, event_id, by, asset_id, units,
                                                         revenue, grant):  # fmt: skip
                return
            with client_for(led, by) as client:
                eid = client.record_usage(asset_id, units, revenue, grant=grant, id=event_id)
                results = client.flush()
        finally:
            led.close()
        seq = results[0].seqs[0] if results else None
        emit({"id": eid, "seq": seq}, lambda: out.print(f"recorded {eid}"))


def _recorded_before(led: Ledger, event_id: str, by: str, asset_id: str, units: int,
                     revenue: str | None, grant: str | None) -> bool:  # fmt: skip
    """True (and says so) when this very use is already in the log under `event_id`; a
    different event under that id is an error. The time of the first run is kept."""
    stored = led.find_events([event_id]).get(event_id)
    if stored is None:
        return False
    micros = to_micros(revenue, "revenue", event_id)
    event = usage_event(event_id, by, now_timestamp(), asset_id, units, micros, grant)
    if not imports.same_use(stored, event):
        fail(f"event {event_id!r}: field 'id': already in the log at seq {stored.seq} "
             "with other content")  # fmt: skip
    emit({"id": event_id, "seq": stored.seq, "already": True},
         lambda: out.print(f"already recorded {event_id} (seq {stored.seq})"))  # fmt: skip
    return True


@usage.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--by", "by", required=True, help="the party that used the assets")
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(1, 100_000))
@common_options
def usage_import(file: Path, by: str, batch_size: int) -> None:
    """Import usage from JSONL or CSV; the whole file is checked before anything is appended."""
    with handled():
        lines = imports.read_usage_file(file, by)
        led = open_ledger()
        try:
            client = client_for(led, by, batch_size=batch_size)
            summary = imports.append_lines(led, client, lines, batch_size, progress())
        finally:
            led.close()
        emit(
            summary,
            lambda: out.print(
                f"imported {summary['lines']} line(s) from {file}: {summary['appended']} appended, "
                f"{summary['already']} already in the log"
            ),
        )


COMMANDS = [init, party, asset, consent, derive, usage]
