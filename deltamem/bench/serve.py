"""Benchmark of `deltamem serve`: concurrent users over real HTTP on loopback.

Run ``deltamem bench serve [--users 1,4,16] [--turns 4] [--max-new-tokens 32] [--replicas 1,2] [--threads N]
[--out FILE]``.

For each number of users N, in one run, the same workload is served twice by
a fresh in-process uvicorn server on 127.0.0.1 with its own SQLite file:
``continuous`` (continuous batching: a request joins the running decode batch
at the next step, up to 16 rows) and ``one-at-a-time`` (``max_batch=1``). Each
user is a thread that sends ``--turns`` chat turns (greedy,
``max_tokens=--max-new-tokens``) to its own memory, one after another.
Reported per mode: requests/s, p50/p95 latency, completion tokens/s, and the
mean number of rows per decode step; then the continuous/one-at-a-time ratios.
Then, with the `cluster` extra, the largest user count is served through Ray
Serve by 1 and by 2 replicas (``--replicas``; a local Ray cluster; each of n
replicas gets max(1, threads // n) torch threads), and the ratio is reported.
Separately, the write cost of one turn of at most 100 tokens (a user message
and a reply, as rendered) is timed twice: the forward alone
(`MemorySession.write`) and through the API (`POST /v1/memories/{id}/messages`:
write + one-transaction commit + HTTP). Results print as a table and as JSON.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time

MODES = {"continuous": 16, "one-at-a-time": 1}


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


class _Server:
    """uvicorn on a free loopback port in a thread, stopped on exit."""

    def __init__(self, app):
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, loop="asyncio", http="h11"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def _app(model, tok, db: str, max_batch: int, max_new_tokens: int):
    from ..serve.app import create_app
    from ..store import MemoryStore

    return create_app(model, tok, MemoryStore(db), model_name="bench", max_batch=max_batch,
                      max_new_tokens=max_new_tokens)


def _user_text(u: int, t: int) -> str:
    return f"User {u}, note {t}: my locker is number {100 * u + t} and my favourite colour is shade {t * 7 % 11}."


def drive(base: str, users: int, turns: int, max_new_tokens: int, tag: str = "") -> dict:
    """`users` threads, each sending `turns` chat turns to its own memory; returns the figures."""
    import httpx

    httpx.post(base + "/v1/chat/completions", timeout=600, json={  # warm-up, not timed
        "model": "bench", "user": f"warmup{tag}", "max_tokens": max_new_tokens,
        "messages": [{"role": "user", "content": _user_text(0, 0)}]}).raise_for_status()
    latencies: list[float] = []
    tokens = [0]
    errors: list[str] = []

    def user(u: int) -> None:
        with httpx.Client(base_url=base, timeout=600) as c:
            for t in range(turns):
                t0 = time.perf_counter()
                r = c.post("/v1/chat/completions", json={
                    "model": "bench", "user": f"user{u}{tag}", "max_tokens": max_new_tokens,
                    "messages": [{"role": "user", "content": _user_text(u, t)}]})
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(r.text[:200])
                    return
                tokens[0] += r.json()["usage"]["completion_tokens"]

    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    t0 = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"benchmark requests failed: {errors[0]}")
    n = len(latencies)
    return {"requests": n, "seconds": round(wall, 3), "req_per_s": round(n / wall, 3),
            "p50_ms": round(1000 * _percentile(latencies, 0.5), 1), "p95_ms": round(1000 * _percentile(latencies, 0.95), 1),
            "tokens_per_s": round(tokens[0] / wall, 2), "completion_tokens": tokens[0]}


def run_load(model, tok, users: int, turns: int, max_new_tokens: int, max_batch: int, tmp: str) -> dict:
    """Serve `users` x `turns` chat turns in-process; returns throughput, latency and mean decode rows."""
    app = _app(model, tok, "sqlite:///" + os.path.join(tmp, f"load-{users}-{max_batch}.db"), max_batch,
               max_new_tokens)
    with _Server(app) as base:
        engine = app.state.engine
        row = drive(base, users, turns, max_new_tokens)
        steps = list(engine.batches)
    row["mean_batch"] = round(statistics.mean(steps), 2) if steps else 0.0
    return row


def run_replicas(counts: list[int], users: int, turns: int, max_new_tokens: int, threads: int, tmp: str,
                 model_args: dict) -> dict:
    """The same load through Ray Serve with each replica count in `counts`, on one local Ray cluster."""
    import socket

    import ray
    from ray import serve

    from ..serve.cluster import ClusterOptions, build

    os.environ["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p])  # replicas import what we import
    ray.init(num_cpus=max(threads, max(counts)), include_dashboard=False, object_store_memory=128 << 20,
             logging_level="WARNING", log_to_driver=False)
    out = {}
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for n in counts:
            options = ClusterOptions(db="sqlite:///" + os.path.join(tmp, f"replicas-{n}.db"), replicas=n,
                                     replica_cpus=max(1, threads // n), model_name="bench",
                                     max_new_tokens=max_new_tokens, **model_args)
            serve.run(build(options), name="deltamem", route_prefix="/")
            out[str(n)] = drive(f"http://127.0.0.1:{port}", users, turns, max_new_tokens, tag=f"r{n}")
            serve.delete("deltamem")
            print(f"[bench serve] {n} replicas done", file=sys.stderr)
    finally:
        ray.shutdown()
    return out


def write_cost(model, tok, tmp: str, repeats: int = 7) -> dict:
    """Median ms to write one turn of at most 100 tokens: the forward alone, and through the API (write + commit)."""
    import httpx

    from ..runtime.session import MemorySession, turn_messages

    sess = MemorySession(model, tok)
    filler = "The quick brown fox jumps over the lazy dog near the river bank today. " * 10
    words = filler.split()
    user, reply = " ".join(words[:40]), " ".join(words[40:])
    while len(sess.renderer.encode(sess.renderer.message({"role": "user", "content": user}))) + len(
            sess.renderer.encode(sess.renderer.message({"role": "assistant", "content": reply}))) > 100:
        reply = reply.rsplit(" ", 1)[0]
    turn = turn_messages(user, reply)
    tokens = sum(len(sess.renderer.encode(sess.renderer.message(m))) for m in turn)
    sess.write(turn)  # warm-up, and some history as context
    forward = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.write(turn)
        forward.append(time.perf_counter() - t0)
    app = _app(model, tok, "sqlite:///" + os.path.join(tmp, "write.db"), 16, 8)
    api = []
    with _Server(app) as base, httpx.Client(base_url=base, timeout=600) as c:
        c.post("/v1/memories", json={"id": "w", "messages": turn}).raise_for_status()
        for _ in range(repeats):
            t0 = time.perf_counter()
            c.post("/v1/memories/w/messages", json={"messages": turn}).raise_for_status()
            api.append(time.perf_counter() - t0)
    return {"tokens": tokens, "forward_ms": round(1000 * statistics.median(forward), 2),
            "api_ms": round(1000 * statistics.median(api), 2)}


def bench(what: str, users: str = "1,4,16", turns: int = 4, max_new_tokens: int = 32, threads: int | None = None,
          backbone: str | None = None, adapter: str | None = None, out: str | None = None,
          model_factory: str | None = None, replicas: str = "1,2") -> None:
    """Benchmarks. `serve`: N concurrent users (`--users 1,4,16`) of `deltamem serve` on the embedded model:
    requests/s, p50/p95 latency and tokens/s, continuous batching vs one at a time; the largest N through
    Ray Serve with 1 and 2 replicas (`--replicas 1,2`, the `cluster` extra; `--replicas ''` skips it); and the
    write cost of one turn of at most 100 tokens. (The op and adapter benchmarks: `python -m
    deltamem.bench.ops` / `.adapter`.)"""
    if what != "serve":
        raise ValueError(f"unknown benchmark {what!r}; available: serve")
    from ..serve import require_extra

    require_extra()
    import importlib
    import importlib.util

    import torch

    if threads:
        torch.set_num_threads(threads)
    counts = [int(x) for x in users.split(",") if x.strip()]
    replica_counts = [int(x) for x in (replicas or "").split(",") if x.strip()]
    if not counts or min(counts) < 1 or turns < 1 or max_new_tokens < 1 or min(replica_counts, default=1) < 1:
        raise ValueError("--users and --replicas must list positive counts; --turns and --max-new-tokens must be "
                         "positive")
    if replica_counts and importlib.util.find_spec("ray") is None:
        print("[bench serve] no Ray Serve (pip install 'deltamem[cluster]'): replicas skipped", file=sys.stderr)
        replica_counts = []
    if model_factory:
        module, _, fn = model_factory.partition(":")
        model, tok, note = getattr(importlib.import_module(module), fn)()
    else:
        from ..runtime.model_setup import load_model

        model, tok, note = load_model(backbone, adapter, progress=False)
    report = {"model": note, "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "turns_per_user": turns, "max_new_tokens": max_new_tokens, "users": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            row = {mode: run_load(model, tok, n, turns, max_new_tokens, mb, tmp) for mode, mb in MODES.items()}
            b, s = row["continuous"], row["one-at-a-time"]
            row["speedup_req_per_s"] = round(b["req_per_s"] / s["req_per_s"], 2)
            row["speedup_tokens_per_s"] = round(b["tokens_per_s"] / s["tokens_per_s"], 2) if s["tokens_per_s"] else None
            report["users"][str(n)] = row
            print(f"[bench serve] {n} users done", file=sys.stderr)
        if replica_counts:
            model_args = dict(model_factory=model_factory, backbone=backbone, adapter=adapter)
            reps = run_replicas(replica_counts, max(counts), turns, max_new_tokens,
                                threads or torch.get_num_threads(), tmp, model_args)
            report["replicas"] = {"users": max(counts), "mode": "continuous", **reps}
            if len(reps) > 1:
                first, last = reps[str(replica_counts[0])], reps[str(replica_counts[-1])]
                report["replicas"]["speedup_req_per_s"] = round(last["req_per_s"] / first["req_per_s"], 2)
        report["write_100_tokens"] = write_cost(model, tok, tmp)
    print(table(report))
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def table(report: dict) -> str:
    lines = [f"deltamem serve benchmark: {report['model']}, {report['torch_threads']} torch threads, "
             f"{report['turns_per_user']} turns/user, max_tokens {report['max_new_tokens']}",
             "| users | mode | req/s | p50 ms | p95 ms | tokens/s | mean rows per step |", "|---|---|---|---|---|---|---|"]
    for n, row in report["users"].items():
        for mode in MODES:
            r = row[mode]
            lines.append(f"| {n} | {mode} | {r['req_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['tokens_per_s']} | "
                         f"{r['mean_batch']} |")
        lines.append(f"| {n} | continuous / one-at-a-time | {row['speedup_req_per_s']}x | | | "
                     f"{row['speedup_tokens_per_s']}x | |")
    if rep := report.get("replicas"):
        lines += ["", f"Ray Serve replicas, {rep['users']} users, continuous batching (n replicas: "
                      f"max(1, {report['torch_threads']} // n) torch threads each):",
                  "| replicas | req/s | p50 ms | p95 ms | tokens/s |", "|---|---|---|---|---|"]
        for n, r in rep.items():
            if isinstance(r, dict):
                lines.append(f"| {n} | {r['req_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['tokens_per_s']} |")
        if "speedup_req_per_s" in rep:
            lines.append(f"| ratio | {rep['speedup_req_per_s']}x | | | |")
    w = report["write_100_tokens"]
    lines.append(f"write of one {w['tokens']}-token turn: {w['forward_ms']} ms forward, {w['api_ms']} ms through the "
                 "API (write + commit + HTTP)")
    return "\n".join(lines)


if __name__ == "__main__":
    from ..cli import main

    sys.exit(main(["bench", "serve", *sys.argv[1:]]))
