"""SQLAlchemy 2.0 models: entities with aliases, documents split into sections, images, tags, index versions."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON}


class Entity(Base):
    """A thing the KB knows about, with a stable key such as `country:BTN` or `emoji:1F34E`."""

    __tablename__ = "entities"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    kind: Mapped[str] = mapped_column(String(50), index=True)
    name: Mapped[str] = mapped_column(String(500))
    attributes: Mapped[dict] = mapped_column(default=dict)
    source: Mapped[str | None] = mapped_column(String(200))
    license: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    aliases: Mapped[list[Alias]] = relationship(back_populates="entity", cascade="all, delete-orphan",
                                                         order_by="Alias.id")
    documents: Mapped[list[Document]] = relationship(back_populates="entity", cascade="all, delete-orphan",
                                                         order_by="Document.id")
    images: Mapped[list[Image]] = relationship(back_populates="entity", cascade="all, delete-orphan",
                                                         order_by="Image.id")
    tags: Mapped[list[Tag]] = relationship(back_populates="entity", cascade="all, delete-orphan",
                                                         order_by="Tag.id")


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("entity_id", "alias"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"), index=True)
    alias: Mapped[str] = mapped_column(String(500), index=True)
    entity: Mapped[Entity] = relationship(back_populates="aliases")


class Document(Base):
    """One source text about an entity; `content_hash` makes re-ingest idempotent."""

    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("entity_id", "content_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(500))
    source: Mapped[str | None] = mapped_column(String(200))
    license: Mapped[str | None] = mapped_column(String(100))
    content_hash: Mapped[str] = mapped_column(String(64))
    entity: Mapped[Entity] = relationship(back_populates="documents")
    sections: Mapped[list[Section]] = relationship(back_populates="document", cascade="all, delete-orphan",
                                                   order_by="Section.position")


class Section(Base):
    """A passage of a document: the unit the text index embeds and retrieval returns."""

    __tablename__ = "sections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    heading: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(200))  # the source field the sentence came from
    document: Mapped[Document] = relationship(back_populates="sections")


class Image(Base):
    """An image of an entity, stored by content hash under the data home."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("entity_id", "content_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"), index=True)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(1000))  # relative to the data home
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    source: Mapped[str | None] = mapped_column(String(200))
    license: Mapped[str | None] = mapped_column(String(100))
    style: Mapped[str | None] = mapped_column(String(100))  # rendering family, e.g. "flag", "emoji-google"
    entity: Mapped[Entity] = relationship(back_populates="images")


class Tag(Base):
    """A label on an entity (or one of its images), from a source, with a review state."""

    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("entity_id", "image_id", "label", "source"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(200), index=True)
    source: Mapped[str] = mapped_column(String(100))  # "manifest", "tagger:<model>", "user:<name>"
    confidence: Mapped[float] = mapped_column(Float, default=1.0)
    review_state: Mapped[str] = mapped_column(String(20), default="pending")  # pending|accepted|rejected
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    entity: Mapped[Entity] = relationship(back_populates="tags")


class IndexVersion(Base):
    """One built FAISS index; exactly one version per modality is active, older ones stay for rollback."""

    __tablename__ = "index_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    modality: Mapped[str] = mapped_column(String(20), index=True)  # "text" | "image"
    embedder: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(20))
    count: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1000))  # relative to the data home
    checksum: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
