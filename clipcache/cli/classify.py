"""``clipcache`` commands of the classify stage."""

COMMANDS: list = []
