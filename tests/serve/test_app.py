"""The app in-process (no socket): endpoints, the OpenAI error shape for every kind of bad input,
limits, import/export, and that a refused request changes nothing."""

from __future__ import annotations

import json

import pytest
import torch

import serve_helpers as h
from deltamem.adapter import MemoryState
from deltamem.runtime.session import MemorySession

USER = [{"role": "user", "content": "My locker code is 4412."}]


def chat(client, user="u1", content="My locker code is 4412.", headers=None, **kw):
    body = {"model": h.MODEL, "user": user, "max_tokens": 6, "messages": [{"role": "user", "content": content}], **kw}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def assert_error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def test_chat_writes_the_turn_and_creates_the_memory(make_app):
    c = make_app()
    assert_error(c.get("/v1/memories/u1"), 404)
    r = chat(c)
    assert r.status_code == 200, r.text
    body = r.json()
    reply = body["choices"][0]["message"]["content"]
    assert body["object"] == "chat.completion" and body["memory"] == {"id": "u1", "version": 1}
    assert body["usage"]["completion_tokens"] <= 6 and body["choices"][0]["finish_reason"] in ("stop", "length")
    info = c.get("/v1/memories/u1").json()
    assert info["version"] == 1 and info["turns"] == 2 and info["tokens_written"] > 0
    assert info["messages"] == [USER[0], {"role": "assistant", "content": reply}]
    assert info["state_bytes"] == 2 * 8 * 8 * 4  # 2 layers x one 8x8 float32 state


def test_stream_is_openai_sse_and_matches_what_was_written(make_app):
    c = make_app()
    r = chat(c, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e[len("data: "):] for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length") and chunks[-1]["usage"]["total_tokens"] > 0
    assert c.get("/v1/memories/u1").json()["messages"][1]["content"] == text.strip()


def test_ask_is_read_only_and_shows_its_prompt(make_app):
    c = make_app()
    chat(c)
    before = c.get("/v1/memories/u1/export").content
    r = c.post("/v1/memories/u1/ask", json={"question": "What is my locker code?", "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert "4412" in r.json()["prompt"] and "What is my locker code?" in r.json()["prompt"]
    assert c.get("/v1/memories/u1/export").content == before
    assert c.get("/v1/memories/u1").json()["version"] == 1
    assert_error(c.post("/v1/memories/nobody/ask", json={"question": "hi"}), 404)


def test_memory_endpoints(make_app):
    c = make_app()
    r = c.post("/v1/memories", json={"id": "m1", "messages": USER})
    assert r.status_code == 201 and r.json()["version"] == 1 and r.json()["turns"] == 1
    assert_error(c.post("/v1/memories", json={"id": "m1"}), 409)
    fresh = c.post("/v1/memories", json={})
    assert fresh.status_code == 201 and fresh.json()["version"] == 0 and fresh.json()["id"].startswith("mem_")
    r = c.post("/v1/memories/m1/messages", json={"messages": [{"role": "assistant", "content": "Noted."}]})
    assert r.json()["version"] == 2 and r.json()["turns"] == 2
    assert_error(c.post("/v1/memories/nope/messages", json={"messages": USER}), 404)
    assert c.delete("/v1/memories/m1").json()["deleted"] is True
    assert_error(c.get("/v1/memories/m1"), 404)
    assert_error(c.delete("/v1/memories/m1"), 404)


def test_export_import_round_trip_is_bit_exact(make_app, tiny):
    c = make_app()
    chat(c)
    data = c.get("/v1/memories/u1/export").content
    sess = MemorySession.from_bytes(data, *tiny)  # a regular session file
    assert sess.transcript == c.get("/v1/memories/u1").json()["messages"]
    r = c.put("/v1/memories/copy/import", content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and r.json()["version"] == 1
    assert c.get("/v1/memories/copy/export").content == data
    r = c.put("/v1/memories/copy/import", content=data)  # replacing counts as a write
    assert r.json()["version"] == 2


def test_import_from_another_backbone_or_a_bad_file_changes_nothing(make_app, tiny):
    c = make_app()
    chat(c)
    before = c.get("/v1/memories/u1/export").content
    other = h.runtime_fixtures().build_tiny(tiny[1], seed=5)  # other backbone weights
    foreign = MemorySession(other, tiny[1]).to_bytes()
    err = assert_error(c.put("/v1/memories/u1/import", content=foreign), 409)
    assert "backbone" in err["message"]
    corrupt = before.replace(b"deltamem.memory_state", b"deltamem.memory_stat_")
    for bad in (b"junk", corrupt, b""):
        assert_error(c.put("/v1/memories/u1/import", content=bad), 422)
    assert c.get("/v1/memories/u1/export").content == before
    assert c.get("/v1/memories/u1").json()["version"] == 1


@pytest.mark.parametrize("body,status,param", [
    ({"model": h.MODEL, "user": "u1", "messages": []}, 422, "messages"),
    ({"model": h.MODEL, "user": "u1", "messages": [{"role": "wizard", "content": "hi"}]}, 422, "messages"),
    ({"model": h.MODEL, "user": "u1", "messages": [{"role": "user", "content": "  "}]}, 422, "messages"),
    ({"model": h.MODEL, "user": "u1", "messages": [{"role": "user", "content": 5}]}, 422, None),
    ({"model": h.MODEL, "user": "u1", "messages": [{"role": "assistant", "content": "hi"}]}, 422, "messages"),
    ({"model": h.MODEL, "messages": USER}, 422, "user"),
    ({"model": h.MODEL, "user": "bad/id", "messages": USER}, 422, "user"),
    ({"model": h.MODEL, "user": "u1", "messages": USER, "max_tokens": 10_000}, 422, "max_tokens"),
    ({"model": h.MODEL, "user": "u1", "messages": USER, "max_tokens": "many"}, 422, "max_tokens"),
    ({"model": h.MODEL, "user": "u1", "messages": USER, "temperature": -1}, 422, "temperature"),
    ({"model": h.MODEL, "user": "u1", "messages": USER, "n": 2}, 422, "n"),
    ({"model": h.MODEL, "user": "u1", "messages": USER, "stop": ["\n"]}, 422, "stop"),
    ({"model": "gpt-4", "user": "u1", "messages": USER}, 404, "model"),
    ({"user": "u1", "messages": USER}, 422, "model"),
    ([1, 2], 422, None),
], ids=["empty", "role", "blank", "non-text", "no-user", "no-memory", "bad-id", "max-tokens", "type",
        "temperature", "n", "stop", "model", "no-model", "not-object"])
def test_bad_chat_requests_answer_openai_errors_and_change_nothing(make_app, body, status, param):
    c = make_app()
    assert_error(c.post("/v1/chat/completions", json=body), status, param)
    assert_error(c.get("/v1/memories/u1"), 404)


def test_malformed_json_oversized_bodies_and_prompts(make_app):
    c = make_app(max_body_bytes=2000, max_prompt_tokens=64)
    err = assert_error(c.post("/v1/chat/completions", content=b"{not json",
                              headers={"Content-Type": "application/json"}), 400)
    assert err["code"] == "invalid_json"
    assert_error(chat(c, content="word " * 600), 413)  # body over 2000 bytes
    assert_error(chat(c, content="word " * 100), 413)  # prompt over 64 tokens
    assert_error(c.get("/v1/memories/u1"), 404)
    assert_error(c.get("/v1/nothing-here"), 404)
    assert_error(c.delete("/v1/models"), 405)


def test_write_over_the_write_limit_is_413_and_changes_nothing(make_app):
    c = make_app(max_write_tokens=40)
    c.post("/v1/memories", json={"id": "m"})
    assert_error(c.post("/v1/memories/m/messages", json={"messages": [{"role": "user", "content": "a b " * 40}]}), 413)
    assert c.get("/v1/memories/m").json()["version"] == 0


def test_auth_and_tenants(make_app):
    c = make_app()
    chat(c)
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-key-000"}, {"Authorization": "Basic x"}):
        assert_error(c.get("/v1/models", headers=headers), 401)
        assert_error(c.post("/v1/chat/completions", content=b"{bad", headers=headers), 401)  # auth comes first
    other = {"Authorization": f"Bearer {h.KEYS['globex']}"}
    for method, path in (("get", "/v1/memories/u1"), ("get", "/v1/memories/u1/export"), ("delete", "/v1/memories/u1")):
        assert_error(c.request(method, path, headers=other), 404)
    assert c.post("/v1/memories/u1/ask", json={"question": "hi"}, headers=other).status_code == 404
    r = chat(c, content="Globex note.", headers=other)  # the same id in another tenant is another memory
    assert r.status_code == 200 and r.json()["memory"]["version"] == 1
    assert c.get("/v1/memories/u1").json()["version"] == 1
    assert c.get("/healthz", headers={"Authorization": ""}).status_code == 200
    assert c.get("/openapi.json").status_code == 200


def test_concurrent_turns_on_one_memory_are_serialised(make_app):
    """Threads hammering one memory: every turn applied exactly once, versions count them."""
    import threading

    c = make_app()
    sent, errors = [], []

    def talk(k):
        for t in range(4):
            text = f"thread {k} turn {t}"
            r = chat(c, user="shared", content=text, max_tokens=3)
            (sent.append(text) if r.status_code == 200 else errors.append(r.text))

    threads = [threading.Thread(target=talk, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    info = c.get("/v1/memories/shared").json()
    assert info["version"] == 16
    users = [m["content"] for m in info["messages"] if m["role"] == "user"]
    assert sorted(users) == sorted(sent) and len(info["messages"]) == 32
    for k in range(4):  # each thread's turns in its own order
        mine = [u for u in users if u.startswith(f"thread {k} ")]
        assert mine == [f"thread {k} turn {t}" for t in range(4)]


def test_batched_generation_matches_one_at_a_time(make_app):
    """Rows decoded together give the same greedy replies as rows decoded alone."""
    import concurrent.futures

    def replies(client):
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            rs = list(ex.map(lambda i: chat(client, user=f"b{i}", content=f"fact number {i} " * (i + 1),
                                            max_tokens=5), range(6)))
        return [r.json()["choices"][0]["message"]["content"] for r in rs]

    batched = make_app(max_batch=8, batch_wait_s=0.2)
    alone = make_app(max_batch=1)
    assert replies(batched) == replies(alone)
    assert max(batched.app.state.engine.batches) > 1 and max(alone.app.state.engine.batches) == 1


def test_state_survives_a_new_app_on_the_same_database(make_app, tmp_path, tiny):
    db = "sqlite:///" + str(tmp_path / "shared.db")
    a = make_app(db=db)
    chat(a)
    data = a.get("/v1/memories/u1/export").content
    b = make_app(db=db)
    assert b.get("/v1/memories/u1/export").content == data
    assert torch.equal(MemoryState.from_bytes(data).tensors[0], MemorySession.from_bytes(data, *tiny).state.tensors[0])
