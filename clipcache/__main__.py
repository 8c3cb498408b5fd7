"""``python -m clipcache``, used for ``torchrun -m clipcache extract ...``."""

__all__: list[str] = []

from clipcache.cli import main

main()
