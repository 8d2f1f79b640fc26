"""`edvex`, the command line: a thin face over the ledger and settlement packages."""

from __future__ import annotations

import sys

import click

from . import ledger_cmds, log_cmds, settle_cmds
from .common import Settings, group_options


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@group_options
@click.version_option(package_name="edvex")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """EDVEX, the Equitable Data-Value Exchange: a signed ledger that pays data creators."""
    ctx.ensure_object(Settings)


for command in (*ledger_cmds.COMMANDS, *log_cmds.COMMANDS, *settle_cmds.COMMANDS):
    cli.add_command(command)


def main() -> None:
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)
