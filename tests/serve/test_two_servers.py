"""Black-box load on one database: 8 users x 5 turns over real HTTP, several users sending concurrent
turns to the same memory, first through one `deltamem serve` process and then spread over two processes
that share the database (SQLite WAL; PostgreSQL when configured). Every turn is answered 200, stored once
with the reply the client got, in an order that keeps each user's own turns in sequence; versions count
the writes; tenants never see each other's turns; each stored state is exactly a replay of its transcript."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

import serve_helpers as h

TURNS = 5
# user -> (tenant, memory id): four users share acme's "team-a", two share "team-b", and two globex users
# share globex's own "team-a" (the same id in another tenant is another memory)
USERS = {f"u{i}": ("acme", "team-a") for i in range(4)} | {f"u{i}": ("acme", "team-b") for i in (4, 5)} | {
    f"u{i}": ("globex", "team-a") for i in (6, 7)}


@pytest.fixture(scope="module")
def servers(db_url, keys_file):
    """Two `deltamem serve` processes on the same database: their base URLs."""
    ports = [h.free_port(), h.free_port()]
    procs = [h.start_server(db_url, p, keys_file) for p in ports]
    try:
        for proc, port in zip(procs, ports):
            h.wait_up(proc, port)
        yield [f"http://127.0.0.1:{p}" for p in ports]
    finally:
        for proc in procs:
            proc.terminate()
            log = proc.communicate(timeout=60)[1].decode()
            print(f"server log: {log.count('writing onto the newer state')} writes rebased onto a newer version")


def text(run: str, user: str, t: int) -> str:
    return f"{run} {user} turn {t}: my code is <{run}-{user}-{t}>."


@pytest.mark.parametrize("n", [1, 2], ids=["one-server", "two-servers"])
def test_concurrent_turns_on_shared_memories_lose_nothing(servers, n, tiny):
    run = f"run{n}"
    bases = servers[:n]

    def talk(user):
        tenant, mid = USERS[user]
        out = []
        for t in range(TURNS):  # each turn through the next server in turn
            with httpx.Client(base_url=bases[(int(user[1:]) + t) % n], timeout=300,
                              headers={"Authorization": f"Bearer {h.KEYS[tenant]}"}) as c:
                r = c.post("/v1/chat/completions", json={
                    "model": h.MODEL, "memory_id": f"{run}-{mid}", "max_tokens": 4,
                    "messages": [{"role": "user", "content": text(run, user, t)}]})
            out.append((r.status_code, r.json()))
        return out

    with concurrent.futures.ThreadPoolExecutor(len(USERS)) as ex:
        answers = dict(zip(USERS, ex.map(talk, USERS)))
    bad = [(u, s, b) for u, rs in answers.items() for s, b in rs if s != 200]
    assert not bad, bad[:3]
    replies = {text(run, u, t): answers[u][t][1]["choices"][0]["message"]["content"]
               for u in USERS for t in range(TURNS)}

    for tenant, mid in set(USERS.values()):
        members = [u for u, where in USERS.items() if where == (tenant, mid)]
        r = httpx.get(f"{bases[-1]}/v1/memories/{run}-{mid}", headers={"Authorization": f"Bearer {h.KEYS[tenant]}"})
        info = r.json()
        msgs = info["messages"]
        stored = [m["content"] for m in msgs[::2]]
        assert sorted(stored) == sorted(text(run, u, t) for u in members for t in range(TURNS))  # none lost, none twice
        assert info["version"] == len(stored) == len(members) * TURNS and info["turns"] == 2 * len(stored)
        assert [m["role"] for m in msgs] == ["user", "assistant"] * len(stored)
        for u in members:  # a user's turns in the order they were sent
            assert [s for s in stored if f" {u} turn " in s] == [text(run, u, t) for t in range(TURNS)]
        assert all(msgs[2 * i + 1]["content"] == replies[s] for i, s in enumerate(stored))  # each reply stands
        data = httpx.get(f"{bases[0]}/v1/memories/{run}-{mid}/export",
                         headers={"Authorization": f"Bearer {h.KEYS[tenant]}"}).content
        assert h.replays(*tiny, data, msgs), f"{tenant}/{mid}: state differs from a replay of its transcript"
