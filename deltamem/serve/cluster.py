"""Replicas of `deltamem serve` on Ray Serve (the `cluster` extra; this module imports Ray).

    client -> Ray HTTP proxy -> Ingress (reads tenant + memory id) -> Replica x N -> database

Each `Replica` loads its own model and runs its own engine and the same FastAPI
app as `deltamem serve` (`create_app`), against one shared database
(PostgreSQL on a cluster; a SQLite file in WAL mode on one machine). The
`Ingress` is light: it maps the bearer key to its tenant, finds the memory id
(in the path, or `memory_id` / `user` / `id` in the JSON body) and calls a
replica through a deployment handle with Ray Serve's model multiplexing keyed
by `tenant/memory id`, so a memory's requests go to the replica that already
holds its session; replica responses (status, headers, body chunks, SSE
included) are relayed as they come. Affinity is a preference, not a lock: a
busy or lost replica's memories move to another one, and correctness rests on
the database (versioned commits, writes rebased onto a newer version, see
`service.py`). The ingress answers `GET /healthz` itself with the number of
live replicas.

Built by `build(args)`: `deltamem serve --replicas N` (a local Ray cluster, or
the one at $RAY_ADDRESS) and `serve run configs/serve/*.yaml` both go through it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import time
import typing
from dataclasses import dataclass
from urllib.parse import unquote

from ray import serve
from ray.exceptions import RayError, RayTaskError
from sqlalchemy.engine import make_url
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..store import MemoryStore, database_url
from .auth import KeyRing
from .errors import ApiError, error_body

log = logging.getLogger("deltamem.serve")
APP_NAME = "deltamem"
REPLICA, INGRESS = "DeltaMemReplica", "DeltaMemIngress"
MEMORIES_PER_REPLICA = 256  # memory ids a replica advertises to the router (its session cache holds as many)
MEMORY_PATH = re.compile(r"^/v1/memories/([^/]+)")
SCOPE_KEYS = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string", "headers",
              "client", "server")


@dataclass
class ClusterOptions:
    """What every replica is built with. `deltamem serve` flags of the same name mean the same.

    Args:
        db: the database URL every replica shares (PostgreSQL on a cluster; SQLite only on one machine).
        api_keys: a `tenant:key` file, read where the app is built; only the hashes travel to replicas.
        key_hashes: `{sha256: tenant}`, instead of `api_keys`.
        replicas: a fixed number of replicas; None leaves it to the deployment config (autoscaling).
        replica_cpus: Ray CPUs reserved per replica (also its torch threads, through OMP_NUM_THREADS).
        model_factory: `module:function` returning `(model, tokenizer, description)` (tests).
    """

    db: str | None = None
    api_keys: str | None = None
    key_hashes: dict[str, str] | None = None
    backbone: str | None = None
    adapter: str | None = None
    model_name: str | None = None
    model_factory: str | None = None
    window: int = 1024
    max_body_bytes: int = 8 << 20
    max_prompt_tokens: int = 4096
    max_write_tokens: int = 16384
    max_new_tokens: int = 512
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    replicas: int | None = None
    replica_cpus: float = 1.0

    def __post_init__(self):
        hints = typing.get_type_hints(ClusterOptions)
        for f in dataclasses.fields(self):  # `serve run module:build key=value` passes strings
            value, typ = getattr(self, f.name), hints[f.name]
            base = next((a for a in typing.get_args(typ) if a is not type(None)), typ)
            if isinstance(value, str) and base in (int, float):
                try:
                    setattr(self, f.name, base(value))
                except ValueError:
                    raise ValueError(f"{f.name} must be a number, got {value!r}") from None
        for name in ("window", "max_body_bytes", "max_prompt_tokens", "max_write_tokens", "max_new_tokens",
                     "max_batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (0 if name == "window" else 1):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.replicas is not None and (not isinstance(self.replicas, int) or self.replicas < 1):
            raise ValueError(f"replicas must be a positive int, got {self.replicas!r}")
        if not isinstance(self.replica_cpus, (int, float)) or self.replica_cpus < 0:
            raise ValueError(f"replica_cpus must be a number >= 0, got {self.replica_cpus!r}")
        if self.api_keys is not None:
            if self.key_hashes:
                raise ValueError("give api_keys or key_hashes, not both")
            self.key_hashes, self.api_keys = KeyRing.from_file(self.api_keys).hashes, None

    @classmethod
    def from_args(cls, args: dict) -> "ClusterOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**args)


@serve.deployment(name=REPLICA, max_ongoing_requests=32, health_check_period_s=2, health_check_timeout_s=60,
                  graceful_shutdown_timeout_s=5, logging_config={"enable_access_log": False})
class Replica:
    """One model, one engine, the `deltamem serve` app; requests arrive as ASGI scope + body."""

    def __init__(self, options: ClusterOptions):
        from ..store import MemoryStore
        from .app import create_app
        from .cli import load_served_model, served_name

        model, tok, note = load_served_model(options.model_factory, options.backbone, options.adapter)
        self.name = serve.get_replica_context().replica_id.unique_id
        store = MemoryStore(options.db)
        self.app = create_app(model, tok, store, keys=KeyRing(options.key_hashes), max_batch=options.max_batch,
                              model_name=served_name(options.model_name, options.backbone),
                              max_body_bytes=options.max_body_bytes, batch_wait_s=options.batch_wait_ms / 1000,
                              window_tokens=options.window, max_prompt_tokens=options.max_prompt_tokens,
                              max_write_tokens=options.max_write_tokens, max_new_tokens=options.max_new_tokens)
        print(f"[deltamem] replica {self.name} (pid {os.getpid()}): {note}", file=sys.stderr)

    @serve.multiplexed(max_num_models_per_replica=MEMORIES_PER_REPLICA)
    async def hold(self, key: str) -> str:
        """Tell the router this replica holds memory `key` (the session itself is in the service's cache)."""
        return key

    def check_health(self) -> None:
        if not self.app.state.engine._thread.is_alive():
            raise RuntimeError("the engine thread has stopped")

    async def http(self, scope: dict, body: bytes):
        """Run the app on one request; yield its ASGI messages as they are sent."""
        if key := serve.get_multiplexed_model_id():
            await self.hold(key)
        out: asyncio.Queue = asyncio.Queue()
        fed = False

        async def receive():
            nonlocal fed
            if not fed:
                fed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.get_running_loop().create_future()  # a turn goes on if its client leaves

        async def send(msg):
            if msg["type"] == "http.response.start":
                msg = dict(msg, headers=[*msg.get("headers", []), (b"x-deltamem-replica", self.name.encode())])
            out.put_nowait(msg)

        async def run():
            try:
                await self.app(dict(scope), receive, send)
            finally:
                out.put_nowait(None)

        task = asyncio.create_task(run())
        try:
            while (msg := await out.get()) is not None:
                yield msg
            await task
        finally:
            task.cancel()


class _Relay(Response):
    """Sends a replica's response start, then its body messages as they arrive (streams stay streams)."""

    def __init__(self, start: dict, rest):
        self.start, self.rest = start, rest
        self.status_code = start["status"]

    async def __call__(self, scope, receive, send):
        await send(self.start)
        sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                  for k, v in self.start.get("headers", []))
        try:
            async for msg in self.rest:
                await send(msg)
        except RayError:  # the replica went away mid-stream: end the stream as the app ends a failed one
            log.warning("replica lost while streaming a response")
            lost = error_body("the replica serving this stream was lost; retry", "server_error",
                              code="replica_unavailable")
            tail = f"data: {json.dumps(lost)}\n\ndata: [DONE]\n\n".encode() if sse else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers={"Retry-After": "1"} if e.status == 503 else None)


@serve.deployment(name=INGRESS, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class Ingress:
    """HTTP entry: affinity key, relay to a replica, `/healthz` with the live replica count."""

    def __init__(self, replica, options: ClusterOptions):
        from .cli import served_name

        self.replica, self.keys = replica, KeyRing(options.key_hashes)
        self.model_name = served_name(options.model_name, options.backbone)
        self.max_body_bytes = options.max_body_bytes

    def affinity(self, request: Request, body: bytes) -> str | None:
        """`tenant/memory id` of the request, or None (any replica will do)."""
        tenant = self.keys.tenant(request.headers.get("authorization"))
        if tenant is None:
            return None  # the replica answers 401
        path = request.url.path
        if m := MEMORY_PATH.match(path):
            mid = unquote(m.group(1))
        elif request.method == "POST" and path in ("/v1/chat/completions", "/v1/memories"):
            try:
                data = json.loads(body)
            except ValueError:
                return None
            fields = ("memory_id", "user") if path == "/v1/chat/completions" else ("id",)
            mid = next((data.get(f) for f in fields if isinstance(data, dict) and data.get(f) is not None), None)
        else:
            return None
        return f"{tenant}/{mid}" if isinstance(mid, str) and 0 < len(mid) <= 128 else None

    async def live_replicas(self) -> int:
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(serve.get_replica_context().app_name)
        dep = app.deployments.get(REPLICA) if app else None
        return int(dep.replica_states.get("RUNNING", 0)) if dep else 0

    async def __call__(self, request: Request) -> Response:
        if request.url.path == "/healthz" and request.method == "GET":
            n = await self.live_replicas()
            return JSONResponse({"status": "ok" if n else "unavailable", "model": self.model_name, "replicas": n},
                                status_code=200 if n else 503)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                return _error(ApiError(413, f"request body over this server's limit of {self.max_body_bytes} "
                                            "bytes", code="request_too_large"))
        scope = {k: request.scope[k] for k in SCOPE_KEYS if k in request.scope}
        scope["headers"] = [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])]
        scope["root_path"] = ""
        key = self.affinity(request, body)
        handle = self.replica.options(stream=True, **({"multiplexed_model_id": key} if key else {}))
        tries = 2 if request.method in ("GET", "HEAD") else 1  # a lost replica may have stored a write: no replay
        for attempt in range(tries):
            gen = handle.http.remote(scope, body)
            try:
                first = await gen.__anext__()
            except RayTaskError:
                log.exception("replica failed on %s %s", request.method, request.url.path)
                return _error(ApiError(500, "internal server error", type="server_error"))
            except RayError as e:
                log.warning("replica unavailable on %s %s (%s)", request.method, request.url.path, type(e).__name__)
                if attempt == tries - 1:
                    return _error(ApiError(503, "the replica serving this memory was lost; retry",
                                           code="replica_unavailable"))
                continue
            return _Relay(first, gen)


def build(args: dict) -> serve.Application:
    """The Ray Serve application (`import_path: deltamem.serve.cluster:build`); `args` are `ClusterOptions`."""
    from ..store import MemoryStore

    options = args if isinstance(args, ClusterOptions) else ClusterOptions.from_args(dict(args or {}))
    if options.key_hashes:  # as `deltamem serve` does: the key table holds the hashes being served
        store = MemoryStore(options.db)
        store.set_api_keys(options.key_hashes)
        store.close()
    replica = Replica.options(ray_actor_options={"num_cpus": options.replica_cpus},
                              **({"num_replicas": options.replicas} if options.replicas else {}))
    return Ingress.bind(replica.bind(options), options)


def run_local(options: ClusterOptions, host: str, port: int) -> None:
    """`deltamem serve --replicas N`: start (or join, with $RAY_ADDRESS) a Ray cluster, serve the app behind
    Ray's HTTP proxy on `host:port`, and block until SIGINT/SIGTERM."""
    import ray

    if options.replicas is None:
        raise ValueError("run_local needs a number of replicas")
    address = os.environ.get("RAY_ADDRESS")
    local = {} if address else dict(num_cpus=max(os.cpu_count() or 1, int(options.replicas * options.replica_cpus)),
                                    object_store_memory=128 << 20)
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, **local)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build(options), name=APP_NAME, route_prefix="/")
        print(f"[deltamem] serving {options.replicas} replicas on http://{host}:{port} through Ray Serve "
              f"(database {make_url(database_url(options.db)).render_as_string()})", file=sys.stderr)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if address:  # a shared cluster: take the app down; a local one goes away whole with ray.shutdown()
            serve.delete(APP_NAME)
        ray.shutdown()
