"""Two servers on one database (two apps in-process, each with its own engine and store): a turn whose
commit finds a newer version is written again onto that version, never answered 409; and a database
connection killed in the middle of a commit leaves the turn wholly stored or absent, with a 503 to retry.
Runs on SQLite and, when configured, PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import event, text

import serve_helpers as h
from deltamem.store import StoreUnavailable


def chat(client, mid, content, max_tokens=4):
    return client.post("/v1/chat/completions", json={"model": h.MODEL, "user": mid, "max_tokens": max_tokens,
                                                      "messages": [{"role": "user", "content": content}]})


def first_call(store, name, before):
    """Make `store.<name>` run `before()` the first time it is called (in the server's worker thread)."""
    real = getattr(store, name)
    calls = []

    def hooked(*args):
        if not calls:
            calls.append(args)
            before()
        return real(*args)

    setattr(store, name, hooked)
    return calls


@pytest.mark.parametrize("race", ["moved", "created", "deleted"])
def test_a_turn_that_loses_the_commit_race_is_written_onto_the_newer_version(make_app, db_url, tiny, race):
    a, b = make_app(db=db_url), make_app(db=db_url)
    mid = f"race-{race}"
    if race != "created":
        assert chat(b, mid, "First turn, through server B.").status_code == 200
    rival = {"moved": lambda: chat(b, mid, "Meanwhile server B took this turn."),
             "created": lambda: chat(b, mid, "Server B created the memory first."),
             "deleted": lambda: b.delete(f"/v1/memories/{mid}")}[race]
    answers = []
    hooked = first_call(a.app.state.service.store, "create" if race == "created" else "commit",
                        lambda: answers.append(rival()))
    r = chat(a, mid, "Server A answered this turn first but commits last.")
    assert r.status_code == 200, r.text
    assert hooked and answers[0].status_code == 200, answers[0].text
    info = a.get(f"/v1/memories/{mid}").json()
    turns = [m["content"] for m in info["messages"][::2]]
    expected = {"moved": ["First turn, through server B.", "Meanwhile server B took this turn."],
                "created": ["Server B created the memory first."], "deleted": []}[race]
    assert turns == expected + ["Server A answered this turn first but commits last."]
    assert info["messages"][-1]["content"] == r.json()["choices"][0]["message"]["content"]  # the reply stands
    assert info["version"] == r.json()["memory"]["version"] == len(turns)
    assert a.app.state.service.rebases == 1
    assert h.replays(*tiny, a.get(f"/v1/memories/{mid}/export").content, info["messages"])


def test_a_write_to_a_memory_deleted_meanwhile_is_404(make_app, db_url):
    a, b = make_app(db=db_url), make_app(db=db_url)
    assert chat(b, "gone", "hello").status_code == 200
    first_call(a.app.state.service.store, "commit", lambda: b.delete("/v1/memories/gone"))
    r = a.post("/v1/memories/gone/messages", json={"messages": [{"role": "user", "content": "too late"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "memory_not_found"
    assert b.get("/v1/memories/gone").status_code == 404


def kill_connection_before_commit(store):
    """Arm a one-shot fault: right after the next UPDATE of a memory, the database connection dies
    (PostgreSQL: the backend is terminated by pg_terminate_backend; SQLite: the connection is closed),
    so the COMMIT that follows fails. Returns the list the fault appends to when it fires."""
    fired = []
    pg = store.engine.dialect.name == "postgresql"

    @event.listens_for(store.engine, "after_cursor_execute")
    def kill(conn, cursor, statement, *args):
        if fired or not statement.lstrip().upper().startswith("UPDATE DELTAMEM_MEMORIES"):
            return
        fired.append(statement)
        raw = conn.connection.dbapi_connection
        if pg:
            from sqlalchemy import create_engine

            admin = create_engine(store.engine.url, poolclass=__import__("sqlalchemy").pool.NullPool)
            with admin.connect() as c:
                c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": raw.info.backend_pid})
            admin.dispose()
        else:
            raw.close()

    return fired


def test_connection_killed_mid_commit_stores_nothing_and_answers_503(make_app, db_url, tiny):
    a = make_app(db=db_url)
    assert chat(a, "fault", "A turn before the fault.").status_code == 200
    before = a.get("/v1/memories/fault/export").content
    fired = kill_connection_before_commit(a.app.state.service.store)
    r = chat(a, "fault", "The turn whose commit loses its connection.")
    assert fired and r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "database_unavailable" and r.headers["retry-after"] == "1"
    assert "retry" in r.json()["error"]["message"]
    assert a.get("/v1/memories/fault/export").content == before  # absent, wholly
    assert a.get("/v1/memories/fault").json()["version"] == 1
    r = chat(a, "fault", "The turn whose commit loses its connection.")  # the retry the 503 asks for
    assert r.status_code == 200, r.text
    info = a.get("/v1/memories/fault").json()
    assert info["version"] == 2 and [m["content"] for m in info["messages"][::2]] == [
        "A turn before the fault.", "The turn whose commit loses its connection."]
    assert h.replays(*tiny, a.get("/v1/memories/fault/export").content, info["messages"])


def test_a_commit_that_landed_before_the_connection_broke_is_answered_once(make_app, db_url):
    a = make_app(db=db_url)
    store = a.app.state.service.store
    real = store.commit

    def lost_ack(*args):
        real(*args)
        raise StoreUnavailable("database unavailable (connection lost after COMMIT)")

    assert chat(a, "acked", "one").status_code == 200
    store.commit = lost_ack
    r = chat(a, "acked", "two")
    store.commit = real
    assert r.status_code == 200 and r.json()["memory"]["version"] == 2, r.text
    info = a.get("/v1/memories/acked").json()
    assert info["version"] == 2 and [m["content"] for m in info["messages"][::2]] == ["one", "two"]
