"""MMKB-RAG (arXiv 2504.10074): knowledge-boundary tags, retrieval, filtering and answering."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # why: index/__init__.py
