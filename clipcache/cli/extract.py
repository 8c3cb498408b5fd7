"""``clipcache`` commands of the extract stage."""

COMMANDS: list = []
