"""Tables. A memory is one row: its state blob, transcript and version change together, in one
transaction per completed turn, so a reader never sees a state without the turn that wrote it."""

from __future__ import annotations

from sqlalchemy import Float, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID_LENGTH = 128


class Base(DeclarativeBase):
    pass


class MemoryRow(Base):
    """One tenant's memory. `state` holds `MemoryState.to_bytes()`; `transcript` a JSON list of messages."""

    __tablename__ = "deltamem_memories"

    tenant: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    memory_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    transcript: Mapped[str] = mapped_column(Text)
    tokens_written: Mapped[int] = mapped_column(Integer, default=0)
    adapter: Mapped[str] = mapped_column(String(64))  # adapter_fingerprint of the weights that wrote the state
    backbone: Mapped[str] = mapped_column(String(64))  # backbone_fingerprint
    version: Mapped[int] = mapped_column(Integer, default=0)  # +1 per committed write
    created_at: Mapped[float] = mapped_column(Float)  # unix seconds
    updated_at: Mapped[float] = mapped_column(Float)


class ApiKeyRow(Base):
    """An API key's SHA-256 (never the key) and the tenant it opens."""

    __tablename__ = "deltamem_api_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(ID_LENGTH))
