"""clipcache.evaluation."""
