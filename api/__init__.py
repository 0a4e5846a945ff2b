"""The interfaces: the `mmkb` command line and the FastAPI app."""
