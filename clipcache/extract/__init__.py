"""clipcache.extract."""
