"""Search your own images: index a folder (`indexer`), query it with image + text (`service`)."""
