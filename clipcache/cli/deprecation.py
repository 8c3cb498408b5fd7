"""Old spellings of command-line options, kept for one release with a one-line message on stderr.

A command built with ``cls=Command`` maps each :func:`deprecated_alias` option
onto the parameter that replaced it, after click has parsed the arguments:

    @click.command("fit", cls=Command)
    @click.option("--feature-set")
    @deprecated_alias("--features", "feature_set")
    def fit(feature_set): ...

``clipcache fit --features clip`` then calls ``fit(feature_set="clip")`` and
prints ``clipcache: --features is deprecated and will be removed in the next
release; use --feature-set`` on stderr. Giving both spellings is a usage error.
Aliases are hidden from ``--help``.
"""

from __future__ import annotations

import click
from click.core import ParameterSource

__all__ = ["Command", "DeprecatedAlias", "FlagWithOldValue", "deprecated_alias", "warn_deprecated"]

_UNSET = object()


def warn_deprecated(old: str, new: str) -> None:
    """Print the one-line deprecation message of ``old`` (a flag or a form of a command) on stderr."""
    click.echo(f"clipcache: {old} is deprecated and will be removed in the next release; use {new}", err=True)


def _flag(param: click.Parameter) -> str:
    """The longest spelling of an option, as help and messages name it."""
    return max(param.opts, key=len)


class DeprecatedAlias(click.Option):
    """A hidden option that is the old spelling of another parameter of the same command.

    Parameters
    ----------
    param_decls : sequence of str
        The old flag and the alias's own parameter name.
    replaced_by : str
        Name of the parameter that takes the value (``"feature_set"``).
    value : object, optional
        For an old on/off flag: the value the new parameter takes when the
        old flag is given (``--shared`` sets ``exclusive`` to False).
    instead : str, optional
        The spelling the message recommends; the new option's longest flag by default.
    """

    def __init__(self, param_decls, *, replaced_by: str, value=_UNSET, instead: str | None = None, **attrs):
        if value is not _UNSET:
            attrs["is_flag"] = True
        super().__init__(param_decls, hidden=True, **attrs)
        self.replaced_by = replaced_by
        self.alias_value = value
        self.instead = instead

    def apply(self, ctx: click.Context) -> None:
        """Move a given old spelling's value onto the new parameter, with the deprecation message."""
        value = ctx.params.pop(self.name, None)
        if ctx.get_parameter_source(self.name) is not ParameterSource.COMMANDLINE:
            return
        new = next(p for p in ctx.command.params if p.name == self.replaced_by)
        old, instead = _flag(self), self.instead or _flag(new)
        warn_deprecated(old, instead)
        if ctx.get_parameter_source(new.name) is ParameterSource.COMMANDLINE:
            raise click.UsageError(f"{old} is the old spelling of {instead}; give only {instead}", ctx)
        ctx.params[new.name] = value if self.alias_value is _UNSET else self.alias_value


class Command(click.Command):
    """A click command whose :class:`DeprecatedAlias` options set the parameters that replaced them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        for param in self.params:
            if isinstance(param, DeprecatedAlias):
                param.apply(ctx)
        return rest


def deprecated_alias(old: str, replaced_by: str, *, value=_UNSET, instead: str | None = None, **attrs):
    """Decorator: the hidden option ``old``, a deprecated spelling of the parameter ``replaced_by``.

    The command must be made with ``cls=Command``. ``value`` makes ``old`` an
    on/off flag that sets ``replaced_by`` to that value; ``instead`` is the
    spelling the message recommends (default: the new option's longest flag).
    """
    name = "deprecated_" + old.lstrip("-").replace("-", "_")
    return click.option(old, name, cls=DeprecatedAlias, replaced_by=replaced_by, value=value, instead=instead, **attrs)


class FlagWithOldValue(click.Option):
    """An on/off flag that still accepts the value its old meaning took (``--json [FILE]``).

    Declare it with ``is_flag=False, flag_value=...``: given alone it takes
    ``flag_value``; given a value, the command treats that as the deprecated
    form. ``--help`` shows it as a plain flag.
    """

    def get_help_record(self, ctx: click.Context):
        record = super().get_help_record(ctx)
        return None if record is None else (", ".join(self.opts), record[1])
