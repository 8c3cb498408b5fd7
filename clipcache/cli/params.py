"""Options and checks that several ``clipcache`` commands share.

One spelling for one thing: ``--feature-set`` / ``--aux-feature-set`` select
feature sets, ``-o/--output`` names the output file, ``--json`` prints JSON on
stdout. Their deprecated spellings are declared here once
(:mod:`clipcache.cli.deprecation`).
"""

from __future__ import annotations

import click

from clipcache.cli.deprecation import deprecated_alias
from clipcache.errors import InvalidParameterError

__all__ = [
    "aux_feature_set_option",
    "checked",
    "feature_set_option",
    "flag_hint",
    "json_option",
    "non_negative",
    "output_option",
    "overwrite_option",
    "positive",
    "stack_options",
]


def flag_hint(command: click.Command, name: str | None) -> str | None:
    """How ``command`` spells the parameter ``name``: its longest flag, or an argument's metavar; None if it has none.

    A click parameter named after a Python builtin carries a trailing underscore
    (``compile_`` for ``--compile``); it answers to the name without it.
    """
    for param in command.params if name else ():
        if param.name in (name, f"{name}_") and isinstance(param, click.Option):
            return max(param.opts, key=len)
        if param.name in (name, f"{name}_") and isinstance(param, click.Argument):
            return param.human_readable_name
    return None


def checked(function, *args, **kwargs):
    """``function(*args, **kwargs)``, with an InvalidParameterError turned into a usage error naming the flag.

    For library checks that run before any work (``ProtocolOptions(...)``,
    ``check_methods``): a bad value then exits with status 2, like a click
    option error, and names the flag of the invoked command.
    """
    try:
        return function(*args, **kwargs)
    except InvalidParameterError as exc:
        ctx = click.get_current_context()
        hint = flag_hint(ctx.command, exc.param)
        raise click.BadParameter(str(exc), ctx=ctx, param_hint=[hint] if hint else None) from None


def positive(ctx: click.Context, param: click.Parameter, value):
    """click callback: refuse an integer below 1 (None passes)."""
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, not {value}")
    return value


def non_negative(ctx: click.Context, param: click.Parameter, value):
    """click callback: refuse an integer below 0 (None passes); for seeds, which numpy takes only from 0 up."""
    if value is not None and value < 0:
        raise click.BadParameter(f"must be 0 or more, not {value}")
    return value


def stack_options(*decorators):
    """One decorator that applies ``decorators`` so that ``--help`` lists them in the given order."""

    def apply(f):
        for decorator in reversed(decorators):  # click lists options in decoration order, outermost first
            f = decorator(f)
        return f

    return apply


def feature_set_option(help: str):
    """``--feature-set NAME`` (parameter ``feature_set``), with the deprecated spelling ``--features``."""
    return stack_options(click.option("--feature-set", "feature_set", help=help), deprecated_alias("--features", "feature_set"))


def aux_feature_set_option(help: str):
    """``--aux-feature-set NAME`` (``aux_feature_set``), with the deprecated spelling ``--aux-features``."""
    return stack_options(
        click.option("--aux-feature-set", "aux_feature_set", help=help),
        deprecated_alias("--aux-features", "aux_feature_set"),
    )


def output_option(help: str, *, required: bool = False):
    """``-o/--output FILE`` (parameter ``output``)."""
    return click.option("-o", "--output", "output", required=required, type=click.Path(dir_okay=False), help=help)


def overwrite_option(kind: str):
    """``--overwrite``: replace an existing output file that is not ``kind`` (parameter ``overwrite``).

    An existing file of the command's own kind is replaced without it, as a
    rerun should; an input is never replaced (:func:`clipcache._io.check_output`).
    """
    return click.option("--overwrite", is_flag=True, help=f"Replace the output file even when it is not {kind}.")


def json_option(help: str):
    """``--json``: a flag that prints JSON on stdout (parameter ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help)
