"""Crash safety: SIGKILL a server in the middle of a load run, restart it on the same database, and
check that every memory is exactly its last committed turn: whole turns only, the version counts them,
and the stored state equals, byte for byte, a replay of the stored transcript through the session
write path."""

from __future__ import annotations

import signal
import threading
import time

import httpx

import serve_helpers as h
from deltamem.adapter import MemoryState
from deltamem.runtime.session import MemorySession, turn_messages

HDR = {"Authorization": f"Bearer {h.KEYS['acme']}"}


def test_sigkill_mid_load_leaves_only_committed_turns(db_url, keys_file, tiny):
    users = [f"crash{i}" for i in range(8)]
    sent = {u: [] for u in users}  # user texts in the order they were sent
    acked = {u: 0 for u in users}  # turns answered with 200
    port = h.free_port()
    proc = h.start_server(db_url, port, keys_file)
    h.wait_up(proc, port)
    base = f"http://127.0.0.1:{port}"

    def run(u):
        with httpx.Client(base_url=base, headers=HDR, timeout=300) as c:
            for t in range(40):
                text = f"{u} turn {t}: remember the number {t * 7 + len(u)}."
                sent[u].append(text)
                try:
                    r = c.post("/v1/chat/completions", json={"model": h.MODEL, "user": u, "max_tokens": 6,
                                                             "messages": [{"role": "user", "content": text}]})
                except httpx.HTTPError:
                    return
                assert r.status_code == 200, r.text
                acked[u] += 1

    threads = [threading.Thread(target=run, args=(u,)) for u in users]
    [t.start() for t in threads]
    t0 = time.time()
    while sum(acked.values()) < 3 * len(users) and time.time() - t0 < 600:  # generous: shared CPUs
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [t.join() for t in threads]
    assert sum(acked.values()) >= 3 * len(users)

    proc = h.start_server(db_url, port, keys_file)
    try:
        h.wait_up(proc, port)
        model, tok = tiny
        for u in users:
            info = httpx.get(f"{base}/v1/memories/{u}", headers=HDR).json()
            msgs, v = info["messages"], info["version"]
            assert len(msgs) == 2 * v and acked[u] <= v <= acked[u] + 1, (u, v, acked[u])
            assert [m["content"] for m in msgs[::2]] == sent[u][:v]
            data = httpx.get(f"{base}/v1/memories/{u}/export", headers=HDR).content
            replay = MemorySession(model, tok, **MemoryState.from_bytes(data).extra["settings"])
            for i in range(v):
                replay.write(turn_messages(msgs[2 * i]["content"], msgs[2 * i + 1]["content"]))
            assert replay.to_bytes() == data, f"{u}: stored state differs from a replay of its transcript"
    finally:
        proc.kill()
        proc.wait()
