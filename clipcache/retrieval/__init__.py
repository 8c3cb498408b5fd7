"""clipcache.retrieval."""
