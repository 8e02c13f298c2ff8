"""A real `deltamem serve` on 127.0.0.1 (tiny model), driven by the official `openai` client and plain
HTTP: chat (streaming and not), auth, and 16 concurrent users x 10 turns with isolation checks.
Parametrised over the database: SQLite, and PostgreSQL when DELTAMEM_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pytest

import serve_helpers as h


@pytest.fixture(scope="module")
def acme(live):
    return openai.OpenAI(base_url=live + "/v1", api_key=h.KEYS["acme"], max_retries=0, timeout=120)


def hdr(tenant="acme"):
    return {"Authorization": f"Bearer {h.KEYS[tenant]}"}


def test_openai_client_chat_and_stream(live, acme):
    assert [m.id for m in acme.models.list().data] == [h.MODEL]
    r = acme.chat.completions.create(model=h.MODEL, user="client", max_tokens=5,
                                     messages=[{"role": "user", "content": "My badge number is 771."}])
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens <= 5
    pieces = []
    stream = acme.chat.completions.create(model=h.MODEL, max_tokens=5, stream=True, extra_body={"memory_id": "client"},
                                          messages=[{"role": "user", "content": "And my desk is 12B."}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    info = httpx.get(f"{live}/v1/memories/client", headers=hdr()).json()
    assert info["version"] == 2
    assert [m["content"] for m in info["messages"]] == ["My badge number is 771.", r.choices[0].message.content,
                                                        "And my desk is 12B.", "".join(pieces).strip()]
    with pytest.raises(openai.NotFoundError):
        acme.chat.completions.create(model="gpt-4", user="client", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError):
        acme.chat.completions.create(model=h.MODEL, user="client", messages=[{"role": "oracle", "content": "hi"}])


def test_auth_401_and_cross_tenant_404(live, acme):
    acme.chat.completions.create(model=h.MODEL, user="secret", max_tokens=2,
                                 messages=[{"role": "user", "content": "Acme's launch date is May 3."}])
    for key in ("", "wrong-key-999999"):
        bad = openai.OpenAI(base_url=live + "/v1", api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    r = httpx.post(f"{live}/v1/chat/completions", json={"model": h.MODEL, "user": "secret",
                                                          "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    for method, path in (("GET", "/v1/memories/secret"), ("GET", "/v1/memories/secret/export"),
                         ("POST", "/v1/memories/secret/ask"), ("DELETE", "/v1/memories/secret")):
        body = {"question": "When is the launch?"} if path.endswith("ask") else None
        r = httpx.request(method, live + path, headers=hdr("globex"), json=body)
        assert r.status_code == 404, (method, path, r.text)
    assert httpx.get(f"{live}/v1/memories/secret", headers=hdr()).json()["version"] == 1


def test_sixteen_users_ten_turns_isolated(live):
    """Each user writes facts of their own, concurrently; afterwards every memory holds exactly its own
    turns in order, versions equal turn counts, and no ask prompt shows another user's fact."""
    users, turns = [f"load{i:02d}" for i in range(16)], 10
    statuses: list[int] = []

    def fact(u, t):
        return f"Note {t} from {u}: my token is <{u}-{t}>."

    def run(u):
        with httpx.Client(base_url=live, headers=hdr(), timeout=120) as c:
            for t in range(turns):
                r = c.post("/v1/chat/completions", json={"model": h.MODEL, "user": u, "max_tokens": 4,
                                                         "messages": [{"role": "user", "content": fact(u, t)}]})
                statuses.append(r.status_code)
                assert r.status_code == 200, r.text
            return c.post(f"/v1/memories/{u}/ask", json={"question": "What is my token?", "max_tokens": 2}).json()

    with concurrent.futures.ThreadPoolExecutor(len(users)) as ex:
        asks = dict(zip(users, ex.map(run, users)))
    assert all(s < 500 for s in statuses) and len(statuses) == len(users) * turns
    for u in users:
        info = httpx.get(f"{live}/v1/memories/{u}", headers=hdr()).json()
        assert info["version"] == turns and info["turns"] == 2 * turns
        assert [m["role"] for m in info["messages"]] == ["user", "assistant"] * turns
        assert [m["content"] for m in info["messages"][::2]] == [fact(u, t) for t in range(turns)]
        prompt = asks[u]["prompt"]
        assert f"<{u}-{turns - 1}>" in prompt  # the recent window is there ...
        assert not any(f"<{v}-" in prompt for v in users if v != u)  # ... and nobody else's
    exports = {httpx.get(f"{live}/v1/memories/{u}/export", headers=hdr()).content for u in users}
    assert len(exports) == len(users)
