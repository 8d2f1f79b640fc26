"""What the benchmark runs in its writer processes (importable, as spawned processes need)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ledger import Client

BATCH = 5000  # events per signed batch, as a busy service would send them


def record(client: Client, asset: str, n: int) -> None:
    for i in range(n):
        client.record_usage(asset, 1 + i % 40, "0.01")


def writer(url: str, key: Path, asset: str, n: int, start: Any) -> None:
    """One service process: its own connection and client, started with the others."""
    client = Client.open(url, "shop", key, max_delay=0, batch_size=BATCH)
    start.wait()
    with client:
        record(client, asset, n)
