"""The ``clipcache`` command line: thin click commands over library calls."""

from clipcache.cli.main import cli, main

__all__ = ["cli", "main"]
