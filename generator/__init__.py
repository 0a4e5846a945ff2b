"""Seedream-4.0-style generator (arXiv 2509.20427): VAE + multi-image-conditioned DiT."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # why: index/__init__.py

MAX_SEED = 2**32 - 1  # the largest seed of any image of a call (each counts up from the first): what numpy takes too
