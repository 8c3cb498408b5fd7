"""clipcache.classifiers."""
