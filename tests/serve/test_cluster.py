"""`deltamem serve --replicas 2` on a local Ray cluster (the `cluster` extra): the official openai client's
chat, streaming and tenancy tests of test_live.py run against it unchanged, then the memory endpoints,
`/healthz` counting live replicas, memory affinity, and a replica SIGKILLed under load (the other one
keeps answering, Ray starts a new one). One cluster for the module, on PostgreSQL when
DELTAMEM_TEST_POSTGRES_URL is set (the cluster's database), else on a SQLite file."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

pytest.importorskip("ray.serve", reason="the cluster tests need Ray Serve: pip install -e '.[cluster]'")

import serve_helpers as h  # noqa: E402
from test_live import acme, test_auth_401_and_cross_tenant_404, test_openai_client_chat_and_stream  # noqa: E402,F401

pytestmark = pytest.mark.cluster
HDR = {"Authorization": f"Bearer {h.KEYS['acme']}"}
DRIVER = [0]  # the pid of the cluster's `deltamem serve --replicas` process


@pytest.fixture(scope="module")
def live(keys_file, tmp_path_factory):
    """The cluster's base URL (named `live` so that the imported test_live tests run against it)."""
    tmp = tmp_path_factory.mktemp("cluster")
    base_url = os.environ.get(h.PG_ENV)
    db, drop = h.postgres_db(base_url) if base_url else ("sqlite:///" + str(tmp / "cluster.db"), lambda: None)
    port = h.free_port()
    proc = h.start_cluster(db, port, keys_file, str(tmp / "cluster.log"))
    base = f"http://127.0.0.1:{port}"
    try:
        h.wait_replicas(base, 2, proc)
        DRIVER[0] = proc.pid
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)  # the driver takes its local Ray cluster down with it
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        drop()


def chat(c: httpx.Client, mid: str, text: str):
    return c.post("/v1/chat/completions", json={"model": h.MODEL, "memory_id": mid, "max_tokens": 4,
                                                 "messages": [{"role": "user", "content": text}]})


def test_memory_endpoints_through_the_cluster(live):
    with httpx.Client(base_url=live, headers=HDR, timeout=120) as c:
        r = c.post("/v1/memories", json={"id": "cm", "messages": [{"role": "user", "content": "My pin is 9921."}]})
        assert r.status_code == 201 and r.json()["version"] == 1, r.text
        assert c.post("/v1/memories/cm/messages", json={"messages": [{"role": "assistant", "content": "Noted."}]}
                      ).json()["version"] == 2
        ask = c.post("/v1/memories/cm/ask", json={"question": "What is my pin?", "max_tokens": 3}).json()
        assert "9921" in ask["prompt"] and c.get("/v1/memories/cm").json()["version"] == 2
        data = c.get("/v1/memories/cm/export").content
        assert c.put("/v1/memories/cm2/import", content=data).json()["version"] == 1
        assert c.get("/v1/memories/cm2/export").content == data
        assert c.delete("/v1/memories/cm").json()["deleted"] is True
        assert c.get("/v1/memories/cm").status_code == 404
        r = c.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        big = c.post("/v1/chat/completions", content=b"x" * (9 << 20))
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"


def test_healthz_counts_replicas_and_a_memory_stays_on_its_replica(live):
    body = httpx.get(live + "/healthz").json()
    assert body == {"status": "ok", "model": h.MODEL, "replicas": 2}
    with httpx.Client(base_url=live, headers=HDR, timeout=120) as c:
        assert chat(c, "sticky", "first turn").status_code == 200
        time.sleep(3)  # the replica advertises the memories it holds every 0.1 s; the router hears it soon after
        served = [chat(c, "sticky", f"turn {t}").headers["x-deltamem-replica"] for t in range(6)]
    assert len(set(served)) == 1, served


def test_sigkill_of_one_replica_under_load(live):
    """Users keep talking while one replica is killed: every answer is 200, or 503 `replica_unavailable`
    for a turn that was on the lost replica; the survivor keeps answering; Ray brings the replica back;
    and every memory still holds whole turns only."""
    stop, results = threading.Event(), {}
    lock = threading.Lock()

    def user(u):
        mine = results[u] = []
        with httpx.Client(base_url=live, headers=HDR, timeout=120) as c:
            for t in range(200):  # bounded; stopped long before
                if stop.is_set():
                    break
                r = chat(c, f"kill{u}", f"user {u} turn {t}")
                with lock:
                    mine.append((time.time(), r.status_code, r.json()))

    pids = h.replica_pids(DRIVER[0])
    assert len(pids) == 2, pids
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        futures = [ex.submit(user, u) for u in range(4)]
        while sum(len(r) for r in results.values()) < 12:
            time.sleep(0.1)
        os.kill(pids[0], signal.SIGKILL)
        killed = time.time()
        try:
            while not set(h.replica_pids(DRIVER[0])) - set(pids) and time.time() - killed < 180:  # Ray starts a new one
                time.sleep(0.5)
            h.wait_replicas(live, 2, limit=180)
            while sum(t > killed + 2 for rs in results.values() for t, _, _ in rs) < 8:
                time.sleep(0.1)
        finally:
            stop.set()
            [f.result() for f in futures]
    answers = [(t, s, b) for rs in results.values() for t, s, b in rs]
    assert all(s == 200 or (s == 503 and b["error"]["code"] == "replica_unavailable") for _, s, b in answers), [
        (s, b) for _, s, b in answers if s != 200][:3]
    assert any(s == 200 and killed < t for t, s, _ in answers)  # answered while the replica was gone ...
    assert set(h.replica_pids(DRIVER[0])) - set(pids)  # ... and a new replica process took its place
    with httpx.Client(base_url=live, headers=HDR, timeout=120) as c:
        for u, rs in results.items():
            info = c.get(f"/v1/memories/kill{u}").json()
            acked = sum(s == 200 for _, s, _ in rs)
            assert acked <= info["version"] <= len(rs) and info["turns"] == 2 * info["version"]
            assert chat(c, f"kill{u}", "after the restart").status_code == 200
