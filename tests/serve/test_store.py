"""The store on its own: one transaction per write, optimistic versions (no lost or double writes),
tenants apart, key hashes only. Runs on SQLite and, when configured, PostgreSQL."""

from __future__ import annotations

import concurrent.futures

import pytest

from deltamem.store import AlreadyExists, MemoryStore, VersionConflict, database_url
from deltamem.store.models import ApiKeyRow


@pytest.fixture(scope="module")
def store(db_url):
    s = MemoryStore(db_url)
    yield s
    s.close()


def test_create_get_commit_delete(store):
    rec = store.create("t1", "m", b"state0", [], 0, "ad", "bb")
    assert (rec.version, rec.state, rec.transcript) == (0, b"state0", [])
    with pytest.raises(AlreadyExists):
        store.create("t1", "m", b"x", [], 0, "ad", "bb")
    msgs = [{"role": "user", "content": "héllo \u2603"}]
    new = store.commit("t1", "m", 0, b"state1", msgs, 5)
    assert (new.version, new.state, new.transcript, new.tokens_written) == (1, b"state1", msgs, 5)
    assert store.get("t1", "m") == new and store.get("t2", "m") is None
    assert store.delete("t1", "m") and not store.delete("t1", "m") and store.get("t1", "m") is None


def test_a_stale_version_changes_nothing(store):
    store.create("t1", "stale", b"s0", [], 0, "ad", "bb")
    store.commit("t1", "stale", 0, b"s1", [{"role": "user", "content": "a"}], 1)
    with pytest.raises(VersionConflict):
        store.commit("t1", "stale", 0, b"lost", [], 9)
    with pytest.raises(VersionConflict):
        store.commit("t1", "missing", 0, b"x", [], 0)
    rec = store.get("t1", "stale")
    assert (rec.version, rec.state, rec.tokens_written) == (1, b"s1", 1)


def test_racing_writers_apply_each_version_once(store):
    """Many threads read-modify-write one row with version checks: the winners' count equals the final
    version and the final transcript holds exactly the winners' entries."""
    store.create("t1", "race", b"", [], 0, "ad", "bb")

    def attempt(i):
        for _ in range(50):
            rec = store.get("t1", "race")
            try:
                store.commit("t1", "race", rec.version, b"%d" % i, rec.transcript + [{"role": "user", "content": str(i)}],
                             rec.tokens_written + 1)
                return True
            except VersionConflict:
                continue
        return False

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        ok = list(ex.map(attempt, range(16)))
    rec = store.get("t1", "race")
    assert rec.version == sum(ok) == rec.tokens_written == len(rec.transcript)
    assert sorted(int(m["content"]) for m in rec.transcript) == [i for i, o in enumerate(ok) if o]


def test_api_keys_are_replaced_as_hashes(store):
    store.set_api_keys({"a" * 64: "acme", "b" * 64: "globex"})
    store.set_api_keys({"c" * 64: "acme"})
    assert store.api_keys() == {"c" * 64: "acme"}
    assert ApiKeyRow.__table__.c.keys() == ["key_hash", "tenant"]


def test_database_urls(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTAMEM_HOME", str(tmp_path))
    assert database_url(None) == "sqlite:///" + str(tmp_path / "serve.db")
    assert database_url("x.db").startswith("sqlite:////") and database_url("x.db").endswith("/x.db")
    assert database_url("postgresql://u@h:5/d") == "postgresql+psycopg://u@h:5/d"
    assert database_url("sqlite:///a.db") == "sqlite:///a.db"


def test_sqlite_runs_in_wal_mode(tmp_path):
    from sqlalchemy import text

    s = MemoryStore(str(tmp_path / "w.db"))
    with s.engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    s.close()


def test_a_server_that_loses_the_schema_race_opens_the_store(tmp_path, monkeypatch):
    import sqlalchemy.exc

    from deltamem.store import repository

    url = f"sqlite:///{tmp_path / 'race.db'}"
    MemoryStore(url).close()  # the other server created the tables first
    real, calls = repository.Base.metadata.create_all, []

    def racing(engine):  # what the loser of the race sees: the table appeared after its check
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("CREATE TABLE deltamem_memories", {},
                                                  Exception("table deltamem_memories already exists"))
        real(engine)

    monkeypatch.setattr(repository.Base.metadata, "create_all", racing)
    store = MemoryStore(url)
    assert len(calls) == 2 and store.get("t", "m") is None
    store.close()
    calls.clear()

    def broken(engine):  # any other schema error is not swallowed
        raise sqlalchemy.exc.OperationalError("CREATE TABLE x", {}, Exception("disk I/O error"))

    monkeypatch.setattr(repository.Base.metadata, "create_all", broken)
    with pytest.raises(sqlalchemy.exc.OperationalError, match="disk I/O error"):
        MemoryStore(url)
