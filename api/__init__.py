"""The interfaces: the `mmkb` command line and the FastAPI app."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # why: index/__init__.py
