"""Commands that read the log: log verify|export|checkpoint|prove|rebuild, lineage show."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

import click
from rich.tree import Tree

from ledger import IntegrityError, Ledger
from ledger.store import OPERATOR

from .common import (
    EXIT_VERIFY_FAILED,
    common_options,
    emit,
    err,
    fail,
    handled,
    open_ledger,
    out,
    party_key,
    progress,
)


@click.group()
def log() -> None:
    """The log itself: verify, export, checkpoint, prove, rebuild."""


@log.command("verify")
@common_options
def log_verify() -> None:
    """Recompute every hash, batch digest, signature and the tree; exit 1 at the first bad seq."""
    with handled():
        led = open_ledger()
        try:
            size = led.head().size
            missing = led.missing_guards()
            with progress() as bar:
                task = bar.add_task("verifying", total=size)
                try:
                    report = led.verify(lambda seq: bar.update(task, completed=seq))
                except IntegrityError as e:
                    emit(
                        {"ok": False, "seq": e.seq, "what": e.what, "detail": e.detail},
                        lambda: None,
                    )
                    fail(f"verification failed: {e}", EXIT_VERIFY_FAILED)
        finally:
            led.close()
        if missing:
            err.print(f"edvex: warning: append-only triggers missing: {', '.join(missing)}",
                      markup=False)  # fmt: skip
        emit(
            {
                "ok": True,
                "missing_guards": missing,
                "size": report.size,
                "batches": report.batches,
                "root": report.root.hex(),
            },
            lambda: out.print(
                f"ok: {report.size} events in {report.batches} batches verify; "
                f"root {report.root.hex()}"
            ),
        )


@log.command("export")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write here instead of stdout",
)
@common_options
def log_export(output: Path | None) -> None:
    """Write the whole log as JSON Lines (format edvex.log/1)."""
    with handled():
        led = open_ledger()
        try:
            if output is None:
                write_export(led, sys.stdout)
            else:
                tmp = output.with_name(output.name + ".part")
                with tmp.open("w", encoding="utf-8") as f:
                    n = write_export(led, f)
                tmp.replace(output)
                print(f"exported {n} events to {output}", file=sys.stderr)
        finally:
            led.close()


def write_export(led: Ledger, f: IO[str]) -> int:
    head = led.head()
    header = {"format": "edvex.log/1", "currency": head.currency, "size": head.size}
    f.write(_line(header))
    for rec in led.records(head.size):
        f.write(_line(rec.export()))
    return head.size


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


@log.command("checkpoint")
@click.option("--size", type=click.IntRange(min=0), default=None,
              help="an earlier tree size, e.g. a run's cut (default: now)")  # fmt: skip
@common_options
def log_checkpoint(size: int | None) -> None:
    """Sign (size, root) with the operator key, as a C2SP tlog-checkpoint note."""
    with handled():
        led = open_ledger()
        try:
            cp = led.checkpoint(party_key(OPERATOR), size)
        finally:
            led.close()
        emit(cp, lambda: out.print(cp["note"], markup=False, end=""))


@log.command("prove")
@click.argument("seq", type=click.IntRange(min=1), required=False)
@click.option("--size", type=click.IntRange(min=0), default=None, help="tree size (default: now)")
@click.option(
    "--consistency",
    type=click.IntRange(min=1),
    default=None,
    metavar="M",
    help="prove that the tree of --size extends the tree of size M",
)
@common_options
def log_prove(seq: int | None, size: int | None, consistency: int | None) -> None:
    """An inclusion proof of event SEQ, or a consistency proof with --consistency M."""
    with handled():
        if (seq is None) == (consistency is None):
            fail("give SEQ for an inclusion proof or --consistency M, not both")
        led = open_ledger()
        try:
            if consistency is not None:
                proof = led.consistency_proof(consistency, size)
            else:
                assert seq is not None
                proof = led.inclusion_proof(seq, size)
        finally:
            led.close()
        emit(proof, lambda: out.print(json.dumps(proof, indent=2), markup=False))


@log.command("rebuild")
@common_options
def log_rebuild() -> None:
    """Drop the projections and replay the log into them."""
    with handled():
        led = open_ledger()
        try:
            size = led.head().size
            with progress() as bar:
                task = bar.add_task("rebuilding", total=size)
                n = led.rebuild(lambda seq: bar.update(task, completed=seq))
        finally:
            led.close()
        emit({"replayed": n}, lambda: out.print(f"rebuilt projections from {n} events"))


@click.group()
def lineage() -> None:
    """Where an asset came from."""


@lineage.command("show")
@click.argument("asset_id", metavar="ASSET")
@click.option("--depth", default=20, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--max-children",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="parents shown per asset (the rest are counted)",
)
@common_options
def lineage_show(asset_id: str, depth: int, max_children: int) -> None:
    """ASSET and its ancestors, with normalised weights, shares and grants, as a tree."""
    with handled():
        led = open_ledger()
        try:
            root = led.asset(asset_id)
            if root is None:
                fail(f"no asset {asset_id!r}")
            doc = _lineage(led, asset_id, depth)
        finally:
            led.close()
        emit(doc, lambda: out.print(_tree(doc, max_children)))


def _lineage(led: Ledger, asset_id: str, depth: int) -> dict[str, Any]:
    """The ancestry of `asset_id` as nested dicts, one database query per level."""
    info = led.asset(asset_id) or {}
    node: dict[str, Any] = {
        "asset": asset_id,
        "kind": info.get("kind"),
        "owner": info.get("owner"),
        "parents": [],
    }
    level = {asset_id: [node]}
    for _ in range(depth):
        edges = led.parents_of(list(level))
        nxt: dict[str, list[dict[str, Any]]] = {}
        for child, parents in edges.items():
            for e in parents:
                p = {
                    "asset": e.parent,
                    "weight": e.weight,
                    "normalised": f"{e.norm.numerator}/{e.norm.denominator}",
                    "share": e.share,
                    "grant": e.grant,
                    "parents": [],
                }
                for holder in level[child]:
                    holder["parents"].append(p)
                nxt.setdefault(e.parent, []).append(p)
        if not nxt:
            break
        level = nxt
    _fill_owners(led, node)
    return node


def _fill_owners(led: Ledger, node: dict[str, Any]) -> None:
    """Owner and kind of every ancestor, read in one query per 500 assets."""
    nodes, stack = [], list(node["parents"])
    while stack:
        p = stack.pop()
        nodes.append(p)
        stack.extend(p["parents"])
    info = led.assets(sorted({p["asset"] for p in nodes}))
    for p in nodes:
        row = info.get(p["asset"], {})
        p["owner"], p["kind"] = row.get("owner"), row.get("kind")


def _tree(doc: dict[str, Any], max_children: int) -> Tree:
    tree = Tree(f"[bold]{doc['asset']}[/] ({doc['kind']}, owner {doc['owner']})")
    _branch(tree, doc["parents"], max_children)
    return tree


def _branch(tree: Tree, parents: list[dict[str, Any]], max_children: int) -> None:
    for p in parents[:max_children]:
        label = (
            f"{p['asset']} ({p.get('kind')}, owner {p.get('owner')}) weight {p['weight']} "
            f"= {p['normalised']}, share {p['share']}, grant {p['grant']}"
        )
        _branch(tree.add(label, highlight=False), p["parents"], max_children)
    if len(parents) > max_children:
        tree.add(f"… and {len(parents) - max_children} more")


COMMANDS = [log, lineage]
