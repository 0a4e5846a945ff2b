"""MMKB-RAG (arXiv 2504.10074): knowledge-boundary tags, retrieval, filtering and answering."""
