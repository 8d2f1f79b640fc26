"""`edvex`, the command line: a thin face over the ledger and settlement packages."""

from __future__ import annotations

import sys
from typing import Any

import click

from . import ledger_cmds, log_cmds, settle_cmds
from .common import Settings, err, group_options


class EdvexGroup(click.Group):
    """Usage errors as one line on stderr with exit status 2, like every other bad input."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            sys.exit(130)
        except click.ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            err.print(f"edvex: {e.format_message()}{where}", markup=False)
            sys.exit(e.exit_code)


@click.group(cls=EdvexGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
        cli.main()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)
