"""`MemoryStore`: the only code that talks to the database.

Writes are optimistic: `commit` updates a row only where its version is still the
one the caller read (`UPDATE ... WHERE version = :expected`), in one statement
and one transaction, so a turn is either wholly stored (state, transcript,
version) or not at all, and two writers can never both apply a turn on the same
version. The server adds a per-memory lock on top, so within one process the
check never fails; it guards against a second process on the same database,
whose server then re-applies its write onto the newer version.

A lost or refused connection (the server went away, a killed backend, SQLite
I/O or lock errors) raises `StoreUnavailable`, whatever the driver: the
transaction was rolled back by the database, unless the failure hit the very
end of the commit, which a caller can tell by reading the row again.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass

from sqlalchemy import create_engine, delete, event, select, update
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from .models import ApiKeyRow, Base, MemoryRow


class AlreadyExists(Exception):
    """A memory with this id exists for the tenant."""


class VersionConflict(Exception):
    """The memory changed (or vanished) since it was read."""


class StoreUnavailable(Exception):
    """The database could not be reached or the connection broke during the call."""


def _connection_errors(fn):
    """Translate the drivers' connection-level errors into `StoreUnavailable`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (DBAPIError, DisconnectionError) as e:
            lost = isinstance(e, (OperationalError, InterfaceError, DisconnectionError)) or e.connection_invalidated
            if not lost:
                raise  # a statement the database refused: a bug, not an outage
            raise StoreUnavailable(f"database unavailable ({type(getattr(e, 'orig', e)).__name__})") from e
    return wrapper


@dataclass(frozen=True)
class MemoryRecord:
    tenant: str
    memory_id: str
    state: bytes
    transcript: list[dict]
    tokens_written: int
    adapter: str
    backbone: str
    version: int
    created_at: float
    updated_at: float


def database_url(db: str | None) -> str:
    """`None` -> the default SQLite file under $DELTAMEM_HOME; a plain path -> a SQLite file;
    `postgresql://` -> psycopg 3 (the driver the `serve` extra installs); other URLs unchanged."""
    if db is None:
        home = os.environ.get("DELTAMEM_HOME", os.path.join(os.path.expanduser("~"), ".deltamem"))
        os.makedirs(home, exist_ok=True)
        return "sqlite:///" + os.path.join(home, "serve.db")
    if "://" not in db:
        return "sqlite:///" + os.path.abspath(db)
    if db.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    return db


def _record(row: MemoryRow) -> MemoryRecord:
    return MemoryRecord(row.tenant, row.memory_id, bytes(row.state), json.loads(row.transcript), row.tokens_written,
                        row.adapter, row.backbone, row.version, row.created_at, row.updated_at)


def _create_schema(engine, tries: int = 3) -> None:
    """Create the tables that are missing. Servers starting together on one database can each find a table
    missing and race to create it; the one that loses finds it there on the next look."""
    for attempt in range(tries):
        try:
            Base.metadata.create_all(engine)
            return
        except DBAPIError as e:
            text = str(e.orig).lower()
            if attempt == tries - 1 or not ("already exists" in text or "duplicate key" in text):
                raise


class MemoryStore:
    """Memories and key hashes in one database. Thread-safe (one connection per call from a pool)."""

    def __init__(self, url: str | None = None):
        self.url = database_url(url)
        if self.url.startswith("sqlite"):
            memory = self.url in ("sqlite://", "sqlite:///:memory:")
            self.engine = create_engine(self.url, connect_args={"check_same_thread": False},
                                        poolclass=StaticPool if memory else None)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        _create_schema(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # ---- memories ----------------------------------------------------------------------------
    @_connection_errors
    def get(self, tenant: str, memory_id: str) -> MemoryRecord | None:
        with self._session() as s:
            row = s.get(MemoryRow, (tenant, memory_id))
            return _record(row) if row is not None else None

    @_connection_errors
    def create(self, tenant: str, memory_id: str, state: bytes, transcript: list[dict], tokens_written: int,
               adapter: str, backbone: str, version: int = 0) -> MemoryRecord:
        """Insert a new memory; `AlreadyExists` if the id is taken (also when another process just took it)."""
        now = time.time()
        row = MemoryRow(tenant=tenant, memory_id=memory_id, state=state, transcript=json.dumps(transcript),
                        tokens_written=tokens_written, adapter=adapter, backbone=backbone, version=version,
                        created_at=now, updated_at=now)
        try:
            with self._session() as s, s.begin():
                s.add(row)
        except IntegrityError:
            raise AlreadyExists(f"memory {memory_id!r} already exists") from None
        return _record(row)

    @_connection_errors
    def commit(self, tenant: str, memory_id: str, expected_version: int, state: bytes, transcript: list[dict],
               tokens_written: int, adapter: str | None = None, backbone: str | None = None) -> MemoryRecord:
        """Store a completed write (state + transcript + version + 1) in one transaction, only if the row is
        still at `expected_version`; otherwise raise `VersionConflict` and change nothing."""
        now = time.time()
        values = dict(state=state, transcript=json.dumps(transcript), tokens_written=tokens_written,
                      version=expected_version + 1, updated_at=now)
        if adapter is not None:
            values["adapter"] = adapter
        if backbone is not None:
            values["backbone"] = backbone
        with self._session() as s, s.begin():
            res = s.execute(update(MemoryRow)
                            .where(MemoryRow.tenant == tenant, MemoryRow.memory_id == memory_id,
                                   MemoryRow.version == expected_version)
                            .values(**values))
            if res.rowcount != 1:
                raise VersionConflict(f"memory {memory_id!r} changed since version {expected_version}")
            row = s.get(MemoryRow, (tenant, memory_id))
            return _record(row)

    @_connection_errors
    def delete(self, tenant: str, memory_id: str) -> bool:
        with self._session() as s, s.begin():
            res = s.execute(delete(MemoryRow).where(MemoryRow.tenant == tenant, MemoryRow.memory_id == memory_id))
            return res.rowcount == 1

    @_connection_errors
    def count(self, tenant: str | None = None) -> int:
        with self._session() as s:
            q = select(MemoryRow.memory_id)
            if tenant is not None:
                q = q.where(MemoryRow.tenant == tenant)
            return len(s.execute(q).all())

    # ---- API keys ----------------------------------------------------------------------------
    @_connection_errors
    def set_api_keys(self, hashes: dict[str, str]) -> None:
        """Replace the key table with `{sha256 hex: tenant}` in one transaction."""
        with self._session() as s, s.begin():
            s.execute(delete(ApiKeyRow))
            s.add_all([ApiKeyRow(key_hash=h, tenant=t) for h, t in hashes.items()])

    @_connection_errors
    def api_keys(self) -> dict[str, str]:
        with self._session() as s:
            return {r.key_hash: r.tenant for r in s.scalars(select(ApiKeyRow))}


def _sqlite_pragmas(conn, _record) -> None:
    """WAL (readers never block the writer), full fsync per commit (a completed turn survives a crash),
    and a busy timeout instead of 'database is locked' errors under concurrent writers."""
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
