"""The ``clipcache`` group, its error handling, and command registration.

Each command module (``info``, ``extract``, ``classify``, ``retrieval``) exposes a
list ``COMMANDS`` of click commands; this module adds them to the group. A
:class:`~clipcache.errors.ClipCacheError` (or an OSError) escaping a command is printed as one
line on stderr and the process exits with status 1, never with a traceback.
"""

from __future__ import annotations

import logging
import sys

import click

from clipcache._version import __version__
from clipcache.cli.params import flag_hint
from clipcache.errors import ClipCacheError

__all__ = ["cli", "main", "with_flag_hint"]


def with_flag_hint(ctx: click.Context, exc: ClipCacheError) -> str:
    """The library's message, followed by the flag of the invoked command that sets ``exc.param``, if any."""
    message = str(exc)
    sub = ctx.invoked_subcommand and ctx.command.get_command(ctx, ctx.invoked_subcommand)
    hint = flag_hint(sub, exc.param) if sub else None
    return f"{message} ({hint})" if hint else message


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ClipCacheError as exc:
            raise click.ClickException(with_flag_hint(ctx, exc)) from None
        except OSError as exc:  # a file the library did not anticipate: still one line, naming it
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None
        except KeyboardInterrupt:
            click.echo("clipcache: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="clipcache")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Extract CLIP features once into a feature store, then fit, evaluate and search it."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="clipcache: %(levelname)s: %(message)s")


def _register() -> None:
    from clipcache.cli import classify, extract, info, report, retrieval, shift

    for module in (info, extract, classify, retrieval, shift, report):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Run the command line; used by the ``clipcache`` console script."""
    cli.main(args=argv, prog_name="clipcache")
