"""``clipcache`` commands of the retrieval stage."""

COMMANDS: list = []
