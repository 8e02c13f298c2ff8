"""Helpers for the server tests (a uniquely named module: test folders each have a conftest.py).

`tiny_model()` is the `--model-factory` of test servers: the tiny random llama of
tests/runtime (`build_tiny`, loaded from that conftest under another module
name) with the real SmolLM2 tokenizer. The same call in the test process gives
the same weights, so tests can replay a stored transcript and compare bytes.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FACTORY = "serve_helpers:tiny_model"
MODEL = "deltamem-test"
KEYS = {"acme": "key-acme-123456", "globex": "key-globex-456789"}  # tenant -> API key of the test servers
PG_ENV = "DELTAMEM_TEST_POSTGRES_URL"  # a PostgreSQL server URL: the server tests also run against it
_cache: dict = {}


def runtime_fixtures():
    """tests/runtime/conftest.py as a module (for `build_tiny`)."""
    if "rt" not in _cache:
        spec = importlib.util.spec_from_file_location("runtime_fixtures", os.path.join(REPO, "tests", "runtime",
                                                                                       "conftest.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _cache["rt"] = mod
    return _cache["rt"]


def tokenizer():
    if "tok" not in _cache:
        from deltamem.runtime.backbone import load_backbone

        model, tok = load_backbone(progress=False)
        del model
        _cache["tok"] = tok
    return _cache["tok"]


def tiny_model():
    """`(model, tokenizer, description)`: a 2-layer, 64-wide random llama with δ-mem attached."""
    tok = tokenizer()
    return runtime_fixtures().build_tiny(tok), tok, "tiny random test model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, port: int, keys: str | None = None, *extra: str) -> subprocess.Popen:
    """`deltamem serve` on 127.0.0.1 with the tiny model, one torch thread; output to a log next to nothing."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "deltamem.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--db", db,
           "--model-factory", FACTORY, "--model-name", MODEL, "--max-new-tokens", "32", *extra]
    if keys:
        cmd += ["--api-keys", keys]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_up(proc: subprocess.Popen, port: int, limit: float = 600) -> None:
    import httpx

    t0 = time.time()
    while time.time() - t0 < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not come up")


def replays(model, tokenizer, data: bytes, messages: list[dict]) -> bool:
    """Whether an exported memory equals, byte for byte, a fresh session that wrote `messages` as chat
    turns (user, assistant pairs) in order: the stored state is exactly its transcript's writes."""
    from deltamem.adapter import MemoryState
    from deltamem.runtime.session import MemorySession, turn_messages

    replay = MemorySession(model, tokenizer, **MemoryState.from_bytes(data).extra["settings"])
    for i in range(0, len(messages), 2):
        replay.write(turn_messages(messages[i]["content"], messages[i + 1]["content"]))
    return replay.to_bytes() == data


def start_cluster(db: str, port: int, keys: str, log_path: str, replicas: int = 2) -> subprocess.Popen:
    """`deltamem serve --replicas N` (a local Ray cluster) with the tiny model; output to `log_path` (Ray
    logs every request: a pipe nobody reads would fill up)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "deltamem.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--db", db,
           "--model-factory", FACTORY, "--model-name", MODEL, "--max-new-tokens", "32", "--api-keys", keys,
           "--replicas", str(replicas)]
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def replica_pids(driver: int) -> list[int]:
    """Process ids of the Ray Serve replicas of the deltamem app started by the `deltamem serve --replicas`
    process `driver` (Ray names their processes; only this driver's descendants count)."""
    pids = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if not f.read().startswith(b"ray::ServeReplica:deltamem:DeltaMemReplica"):
                    continue
            pid = int(d)
            while pid > 1 and pid != driver:
                pid = _parent(pid)
            if pid == driver:
                pids.append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(pids)


def wait_replicas(base: str, n: int, proc: subprocess.Popen | None = None, limit: float = 300) -> dict:
    """Poll `GET /healthz` until it reports `n` live replicas; returns its body."""
    import httpx

    t0, body = time.time(), None
    while time.time() - t0 < limit:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the cluster driver exited ({proc.returncode})")
        try:
            r = httpx.get(base + "/healthz", timeout=5)
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
            if body and body.get("replicas") == n:
                return body
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no {n} live replicas after {limit} s (last /healthz: {body})")


def postgres_db(base: str):
    """A fresh database on the server of `base` (dropped afterwards): `(url, drop)`."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from deltamem.store import database_url

    url = make_url(database_url(base))
    name = f"deltamem_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url.set(database=name).render_as_string(hide_password=False), drop
