"""Persistence of memories and API-key hashes (SQLAlchemy: embedded SQLite by default, PostgreSQL by URL)."""

from .repository import AlreadyExists, MemoryRecord, MemoryStore, VersionConflict, database_url

__all__ = ["MemoryStore", "MemoryRecord", "AlreadyExists", "VersionConflict", "database_url"]
