"""``python -m clipcache``, used for ``torchrun -m clipcache extract ...``."""

from clipcache.cli import main

main()
