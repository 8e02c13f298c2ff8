"""`deltamem serve`: load the model once, open the database, serve the app with uvicorn (or, with
`--replicas N`, as N Ray Serve replicas: see `cluster.py`)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path

from . import require_extra


def load_served_model(model_factory: str | None, backbone: str | None, adapter: str | None):
    """`(model, tokenizer, description)`: from `module:function` when given, else the backbone and adapter."""
    if model_factory:
        module, _, fn = model_factory.partition(":")
        return getattr(importlib.import_module(module), fn)()
    from ..runtime.model_setup import load_model

    return load_model(backbone, adapter)


def served_name(model_name: str | None, backbone: str | None) -> str:
    return model_name or "deltamem-" + (Path(backbone).stem.lower() if backbone else "smollm2-135m-instruct")


def serve(host: str = "127.0.0.1", port: int = 8000, db: str | None = None, adapter: str | None = None,
          backbone: str | None = None, api_keys: str | None = None, model_name: str | None = None,
          window: int = 1024, max_body_bytes: int = 8 << 20, max_prompt_tokens: int = 4096,
          max_write_tokens: int = 16384, max_new_tokens: int = 512, max_batch: int = 16, batch_wait_ms: float = 5.0,
          model_factory: str | None = None, replicas: int | None = None) -> None:
    """Serve an OpenAI-compatible chat API with per-user δ-mem memories stored in a database
    (`--db`: a SQLite file path or URL, default ~/.deltamem/serve.db; or postgresql://...).
    `--api-keys FILE` holds `tenant:key` lines; without it only a loopback host is allowed.
    `--max-batch 1` serves generation requests one at a time. `--model-factory module:function`
    (for tests) builds `(model, tokenizer, description)` instead of loading a backbone.
    `--replicas N` serves N replicas, each with its own model, on Ray Serve (the `cluster` extra):
    a local Ray cluster, or the one at $RAY_ADDRESS; see docs/serving-cluster.md."""
    try:
        require_extra()
    except ImportError as e:
        raise SystemExit(f"deltamem serve: error: {e}") from None
    from .auth import KeyRing, is_loopback

    keys = KeyRing.from_file(api_keys) if api_keys else KeyRing()
    if not keys.enabled and not is_loopback(host):
        raise ValueError(f"refusing to serve on {host} without --api-keys: anyone who can reach it could read "
                         "every memory (bind 127.0.0.1, or give --api-keys FILE)")
    logging.basicConfig(level=logging.INFO, format="[deltamem] %(message)s")
    options = dict(db=db, adapter=adapter, backbone=backbone, model_name=model_name, window=window,
                   max_body_bytes=max_body_bytes, max_prompt_tokens=max_prompt_tokens,
                   max_write_tokens=max_write_tokens, max_new_tokens=max_new_tokens, max_batch=max_batch,
                   batch_wait_ms=batch_wait_ms, model_factory=model_factory)
    if replicas is not None:
        if importlib.util.find_spec("ray") is None:
            raise SystemExit("deltamem serve: error: --replicas needs Ray Serve: pip install 'deltamem[cluster]'")
        from .cluster import ClusterOptions, run_local

        return run_local(ClusterOptions(**options, replicas=replicas, key_hashes=keys.hashes), host, port)
    import uvicorn

    from ..store import MemoryStore
    from .app import create_app

    model, tok, note = load_served_model(model_factory, backbone, adapter)
    print(f"[deltamem] {note}", file=sys.stderr)
    store = MemoryStore(db)
    if keys.enabled:
        store.set_api_keys(keys.hashes)
    name = served_name(model_name, backbone)
    app = create_app(model, tok, store, keys=keys, model_name=name, max_body_bytes=max_body_bytes,
                     max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000, window_tokens=window,
                     max_prompt_tokens=max_prompt_tokens, max_write_tokens=max_write_tokens,
                     max_new_tokens=max_new_tokens)
    print(f"[deltamem] serving {name} on http://{host}:{port} (database {store.engine.url.render_as_string()}, "
          f"{'API keys for ' + str(len(set(keys.hashes.values()))) + ' tenants' if keys.enabled else 'no API keys'})",
          file=sys.stderr)
    # the pure-Python loop and HTTP parser, as before the cluster extra brought uvloop and httptools along
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, loop="asyncio", http="h11")
