"""The entity store: SQLAlchemy 2.0 models and the operations on them."""
from index.store.models import Alias, Base, Document, Entity, Image, IndexVersion, Section, Tag
from index.store.db import MODALITIES, EntityStore, make_engine

__all__ = ["MODALITIES", "Alias", "Base", "Document", "Entity", "EntityStore", "Image", "IndexVersion",
           "Section", "Tag", "make_engine"]
