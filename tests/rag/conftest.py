"""Fixtures shared by the MMKB-RAG tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def rag(home, tiny_kb, tiny_reader):
    """MMKB-RAG over the tiny KB, freshly indexed, with the tiny trained reader."""
    from index.config import get_settings
    from index.ingest import ingest_folder
    from index.search import ReferenceIndex
    from index.store import EntityStore
    from rag.pipeline import MMKBRAG
    from rag.vlm.reader_vlm import ReaderVLM

    settings = get_settings()
    store = EntityStore(settings.db_url, settings.home_dir)
    ingest_folder(store, tiny_kb, show_progress=False)
    ref = ReferenceIndex(store, settings)
    ref.build(show_progress=False)
    return MMKBRAG(ReaderVLM.load(tiny_reader), ref)
