"""Persistence of memories and API-key hashes (SQLAlchemy: embedded SQLite by default, PostgreSQL by URL)."""

from .repository import (AlreadyExists, MemoryRecord, MemoryStore, StoreUnavailable, VersionConflict,
                         database_url)

__all__ = ["MemoryStore", "MemoryRecord", "AlreadyExists", "StoreUnavailable", "VersionConflict", "database_url"]
