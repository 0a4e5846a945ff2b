"""What mmkb knows: the entity store, embedders, FAISS vector indexes, ingest and the starter KB."""
