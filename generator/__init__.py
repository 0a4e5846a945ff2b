"""Seedream-4.0-style generator (arXiv 2509.20427): VAE + multi-image-conditioned DiT."""
